// Flow Designer HTTP trigger: one trigger for several monitoring and CI tools.
//
// Like a Flow Designer trigger in xMatters, it posts nothing itself: it sets outputs, and the
// integration's [integrations.event] table in agent.toml maps them to the event (or to none when
// the `Skip` output is true). Written in the modern JavaScript Flow Designer scripts use.
const payload = JSON.parse(request.body);

// Each reader recognises its tool by the payload's shape and answers the outputs.
const readers = [
  // Prometheus Alertmanager webhook (v4) and Grafana unified alerting (same layout).
  [p => Array.isArray(p.alerts) && 'status' in p, p => {
    const firing = p.alerts.filter(a => a.status === 'firing');
    const first = firing[0] ?? p.alerts[0] ?? {};
    const { labels = {}, annotations = {} } = first;
    return {
      Source: p.orgId !== undefined ? 'Grafana' : 'Alertmanager',
      Summary: annotations.summary ?? labels.alertname ?? 'alert',
      Severity: labels.severity ?? 'unknown',
      Details: firing.map(a => `${a.labels.alertname} on ${a.labels.instance}`).join('; '),
      Link: first.generatorURL ?? '',
      Recipients: annotations.recipient ?? constants.DefaultRecipient,
      Skip: firing.length === 0
    };
  }],
  // Grafana legacy alerting.
  [p => 'ruleName' in p && 'state' in p, p => ({
    Source: 'Grafana',
    Summary: p.title,
    Severity: p.tags?.severity ?? 'unknown',
    Details: (p.evalMatches ?? []).map(({ metric, value }) => `${metric}=${value}`).join(', '),
    Link: p.ruleUrl,
    Recipients: p.tags?.team ?? constants.DefaultRecipient,
    Skip: p.state !== 'alerting'
  })],
  // Datadog webhook: the priority ("P1") and transition come as text.
  [p => 'alert_transition' in p, p => {
    const { level } = /^P(?<level>\d)$/.exec(p.alert_priority ?? '')?.groups ?? {};
    const tags = Object.fromEntries(p.tags.split(',').map(t => t.split(':')));
    return {
      Source: 'Datadog',
      Summary: p.title.replace(/^\[\w+\]\s*/, ''),
      Severity: level === '1' ? 'critical' : level === '2' ? 'high' : 'warning',
      Details: p.body.replace(/%%%/g, '').trim(),
      Link: p.link,
      Recipients: tags.team ?? constants.DefaultRecipient,
      Skip: p.alert_transition === 'Recovered'
    };
  }],
  // Azure DevOps service hook: the organisation comes out of the resource URL (lookbehind).
  [p => 'eventType' in p && 'resource' in p, p => ({
    Source: 'Azure DevOps',
    Summary: p.message.text,
    Severity: 'info',
    Details: p.detailedMessage?.text?.trim() ?? '',
    Link: p.resource?._links?.html?.href ?? p.resource?.url ?? '',
    Recipients: /(?<=https:\/\/dev\.azure\.com\/)[^/]+/.exec(p.resource?.url ?? '')?.[0] ?? constants.DefaultRecipient,
    Skip: false
  })],
  // Azure DevOps release gate ("Invoke REST API"): the organisation comes out of the plan URL.
  [p => p.HubName === 'gates' && 'PlanUrl' in p, p => ({
    Source: `Azure DevOps (${/(?<=^https:\/\/vsrm\.dev\.azure\.com\/)[^/]+/.exec(p.PlanUrl)?.[0] ?? 'unknown'})`,
    Summary: p.xmSubject ?? `Release ${p.ReleaseName} waits at a gate`,
    Severity: 'info',
    Details: p.xmMessage ?? p.ReleaseDescription ?? '',
    Link: p.ReleaseURL ?? '',
    Recipients: p.xmRecipients ?? constants.DefaultRecipient,
    Skip: false
  })],
  // Keptn CloudEvents: problems and failed evaluations notify, the rest does not.
  [p => typeof p.type === 'string' && p.type.startsWith('sh.keptn.'), p => {
    const { kind } = /^sh\.keptn\.events?\.(?<kind>[\w-]+)/.exec(p.type).groups;
    const d = p.data ?? {};
    return {
      Source: 'Keptn',
      Summary: kind === 'problem' ? d.ProblemTitle : `Evaluation of ${d.service} in ${d.stage}: ${d.result}`,
      Severity: kind === 'problem' ? d.ProblemDetails?.severityLevel ?? 'unknown' : 'warning',
      Details: kind === 'problem' ? d.ImpactedEntity : `score ${d.evaluationdetails?.score}`,
      Link: d.labels?.link ?? '',
      Recipients: d.project ?? constants.DefaultRecipient,
      Skip: kind === 'problem' ? d.State !== 'OPEN' : d.result !== 'fail'
    };
  }],
  // Nagios notification command (NAGIOS_* macros): host or service.
  [p => 'NAGIOS_NOTIFICATIONTYPE' in p, p => {
    const macros = Object.fromEntries(Object.entries(p).map(([k, v]) => [k.replace(/^NAGIOS_/, ''), v]));
    const service = macros.SERVICEDESC;
    return {
      Source: 'Nagios',
      Summary: service ? `${service} is ${macros.SERVICESTATE}` : `${macros.HOSTNAME} is ${macros.HOSTSTATE}`,
      Severity: (macros.SERVICESTATE ?? macros.HOSTSTATE ?? '').toLowerCase(),
      Details: macros.SERVICEOUTPUT ?? macros.HOSTOUTPUT ?? '',
      Link: '',
      Recipients: macros.CONTACTGROUPNAME ?? constants.DefaultRecipient,
      Skip: macros.NOTIFICATIONTYPE !== 'PROBLEM'
    };
  }]
];

const reader = readers.find(([recognises]) => recognises(payload));
if (!reader) {
  throw new Error(`unrecognised payload with keys ${Object.keys(payload).slice(0, 5).join(', ')}`);
}
const outputs = reader[1](payload);
const severity = String(outputs.Severity).toLowerCase();
outputs.Priority = ['critical', 'high', 'down', 'error'].includes(severity) ? 'HIGH' : 'MEDIUM';
for (const [name, value] of Object.entries(outputs)) {
  output[name] = value;
}
console.log(`${outputs.Source}: ${outputs.Summary}${outputs.Skip ? ' (no event)' : ''}`);
