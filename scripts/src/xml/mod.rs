//! Markup parsing for the scripts' XML helpers (`XMLUtils.DOMParser`, `XMLUtils.xpath`, `JXON`).
//!
//! The host parses: XML with `roxmltree` (namespaces resolved, DTD entities expanded with its
//! billion-laughs guard, no external entities), `text/html` with the HTML5 parser behind
//! `scraper` (lenient, as browsers are). The result goes to the sandbox as one flat node table in
//! JSON, which `dom.js` turns into DOM objects; XPath and JXON then work on those objects.
//!
//! What it deliberately does not do: it never reads files or the network (no external entities,
//! no DTD fetching), never keeps state between calls, and refuses input larger than
//! [`crate::Limits::max_markup_bytes`] or with more nodes than [`crate::Limits::max_markup_nodes`].
//! Namespace declarations (`xmlns:*`) are resolved, not listed among the attributes.

use serde_json::{json, Value};

/// Node kinds as the DOM numbers them (`Node.nodeType`).
const ELEMENT: u8 = 1;
const TEXT: u8 = 3;
const PROCESSING_INSTRUCTION: u8 = 7;
const COMMENT: u8 = 8;

/// Which parser to use, from the MIME type a script passed to `parseFromString`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syntax {
    /// Well-formed XML; errors are reported.
    Xml,
    /// HTML, parsed leniently (never fails).
    Html,
}

impl Syntax {
    /// `text/html` means HTML; every other type (`text/xml`, `application/xml`, `application/
    /// soap+xml`, none) means XML, as in a browser's `DOMParser`.
    pub(crate) fn from_mime(mime: &str) -> Syntax {
        let essence = mime.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("text/html") {
            Syntax::Html
        } else {
            Syntax::Xml
        }
    }
}

/// Why markup could not be turned into a node table; the message is shown to the script.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum MarkupError {
    /// The input is larger than the run allows.
    #[error("the document is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// Input size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The document has more nodes than the run allows.
    #[error("the document has more than {0} nodes")]
    TooManyNodes(usize),
    /// The HTML nests elements more deeply than [`MAX_HTML_DEPTH`].
    #[error("the HTML nests elements more than {0} deep")]
    TooDeep(usize),
    /// The XML is not well-formed.
    #[error("the XML is not well-formed: {0}")]
    Malformed(String),
}

/// The flat node table: each node is `[kind, parent, name, localName, namespaceURI, prefix,
/// value, attributes]`, in document order; `parent` is the index of the parent node or -1 for
/// children of the document; `attributes` is a flat list of `name, localName, namespaceURI,
/// prefix, value` groups.
struct Table {
    nodes: Vec<Value>,
    max_nodes: usize,
}

/// One element's name parts, as the DOM names them.
struct Name<'a> {
    qualified: String,
    local: &'a str,
    namespace: Option<&'a str>,
    prefix: Option<&'a str>,
}

impl<'a> Name<'a> {
    fn new(prefix: Option<&'a str>, local: &'a str, namespace: Option<&'a str>) -> Name<'a> {
        let prefix = prefix.filter(|p| !p.is_empty());
        let qualified = match prefix {
            Some(prefix) => format!("{prefix}:{local}"),
            None => local.to_owned(),
        };
        Name {
            qualified,
            local,
            namespace: namespace.filter(|ns| !ns.is_empty()),
            prefix,
        }
    }

    /// Append this name and `value` to a flat attribute list.
    fn push_attribute(self, list: &mut Vec<Value>, value: &str) {
        list.extend([
            json!(self.qualified),
            json!(self.local),
            json!(self.namespace),
            json!(self.prefix),
            json!(value),
        ]);
    }
}

impl Table {
    fn push(&mut self, node: Value) -> Result<i64, MarkupError> {
        if self.nodes.len() >= self.max_nodes {
            return Err(MarkupError::TooManyNodes(self.max_nodes));
        }
        self.nodes.push(node);
        Ok(i64::try_from(self.nodes.len()).unwrap_or(i64::MAX) - 1)
    }

    /// Add an element; answers its index, the parent of its children.
    fn element(
        &mut self,
        parent: i64,
        name: Name<'_>,
        attributes: Vec<Value>,
    ) -> Result<i64, MarkupError> {
        self.push(json!([
            ELEMENT,
            parent,
            name.qualified,
            name.local,
            name.namespace,
            name.prefix,
            null,
            attributes
        ]))
    }

    /// Add a text, comment or processing-instruction node.
    fn leaf(
        &mut self,
        kind: u8,
        parent: i64,
        name: &str,
        value: Option<&str>,
    ) -> Result<(), MarkupError> {
        self.push(json!([kind, parent, name, null, null, null, value, []]))
            .map(|_| ())
    }
}

/// Parse `text` and return the node table as JSON text: `{"html": bool, "nodes": [...]}`.
pub(crate) fn parse(
    text: &str,
    syntax: Syntax,
    max_bytes: usize,
    max_nodes: usize,
) -> Result<String, MarkupError> {
    if text.len() > max_bytes {
        return Err(MarkupError::TooLarge {
            size: text.len(),
            limit: max_bytes,
        });
    }
    let mut table = Table {
        nodes: Vec::new(),
        max_nodes,
    };
    match syntax {
        Syntax::Xml => xml_table(text, &mut table)?,
        Syntax::Html => html_table(text, &mut table)?,
    }
    Ok(json!({ "html": syntax == Syntax::Html, "nodes": table.nodes }).to_string())
}

/// Visit a tree in document order without recursion, so a deeply nested document cannot exhaust
/// the script thread's native stack: `visit` adds one node under `parent` and answers the index
/// its children hang under (`None` when they are not wanted).
fn walk<N, I>(
    roots: I,
    children: impl Fn(&N) -> I,
    mut visit: impl FnMut(&N, i64) -> Result<Option<i64>, MarkupError>,
) -> Result<(), MarkupError>
where
    I: DoubleEndedIterator<Item = N>,
{
    let mut pending: Vec<(N, i64)> = roots.rev().map(|node| (node, -1)).collect();
    while let Some((node, parent)) = pending.pop() {
        if let Some(index) = visit(&node, parent)? {
            pending.extend(children(&node).rev().map(|child| (child, index)));
        }
    }
    Ok(())
}

fn xml_table(text: &str, table: &mut Table) -> Result<(), MarkupError> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        nodes_limit: u32::try_from(table.max_nodes).unwrap_or(u32::MAX),
        ..roxmltree::ParsingOptions::default()
    };
    let document = roxmltree::Document::parse_with_options(text, options).map_err(|e| match e {
        roxmltree::Error::NodesLimitReached => MarkupError::TooManyNodes(table.max_nodes),
        other => MarkupError::Malformed(other.to_string()),
    })?;
    walk(
        document.root().children(),
        |node| node.children(),
        |node, parent| xml_node(text, *node, parent, table),
    )
}

/// The prefix a name was written with, read from the source at `start` (where the qualified
/// name begins). Reading it is O(1) where asking roxmltree (`lookup_prefix`) walks every
/// namespace in scope; `None` when the source there is not this name (a node that came from an
/// entity's replacement text), and the caller asks roxmltree after all.
fn written_prefix<'t>(text: &'t str, start: usize, local: &str) -> Option<Option<&'t str>> {
    let rest = text.get(start..)?;
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, '>' | '/' | '='))
        .unwrap_or(rest.len());
    let written = &rest[..end];
    match written.strip_suffix(local)? {
        "" => Some(None),
        prefixed => prefixed.strip_suffix(':').map(Some),
    }
}

fn xml_node<'t>(
    text: &'t str,
    node: roxmltree::Node<'_, 't>,
    parent: i64,
    table: &mut Table,
) -> Result<Option<i64>, MarkupError> {
    let prefix_of = |start: usize, local: &str, namespace: Option<&str>| {
        written_prefix(text, start, local)
            .unwrap_or_else(|| namespace.and_then(|ns| node.lookup_prefix(ns)))
    };
    match node.node_type() {
        roxmltree::NodeType::Element => {
            let mut attributes = Vec::new();
            for attribute in node.attributes() {
                let (local, namespace) = (attribute.name(), attribute.namespace());
                let prefix = prefix_of(attribute.range_qname().start, local, namespace);
                Name::new(prefix, local, namespace)
                    .push_attribute(&mut attributes, attribute.value());
            }
            let tag = node.tag_name();
            let prefix = prefix_of(node.range().start + 1, tag.name(), tag.namespace());
            let name = Name::new(prefix, tag.name(), tag.namespace());
            return table.element(parent, name, attributes).map(Some);
        }
        roxmltree::NodeType::Text => table.leaf(TEXT, parent, "#text", node.text())?,
        roxmltree::NodeType::Comment => table.leaf(COMMENT, parent, "#comment", node.text())?,
        roxmltree::NodeType::PI => {
            if let Some(pi) = node.pi() {
                table.leaf(PROCESSING_INSTRUCTION, parent, pi.target, pi.value)?;
            }
        }
        roxmltree::NodeType::Root => {}
    }
    Ok(None)
}

/// How deep HTML may nest. The HTML5 tree builder looks through the stack of open elements for
/// most start tags, so its time grows with the square of the depth (measured: 8,000 nested
/// `<div>`s take 0.2 s in a release build) and it cannot be interrupted; browsers stop nesting
/// long before this anyway.
const MAX_HTML_DEPTH: usize = 4096;

/// Elements that never hold children or whose end tag the parser supplies when a sibling starts;
/// they do not deepen real documents even when nobody closes them.
const FLAT_HTML_ELEMENTS: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr", "p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup", "thead", "tbody",
    "tfoot", "colgroup", "caption", "rb", "rt", "rp", "html", "head", "body",
];

/// An upper estimate of how deep `text` nests elements: start tags minus end tags, leaving out
/// [`FLAT_HTML_ELEMENTS`] and self-closed tags. Cheap and conservative: it never under-counts
/// the depth the tree builder would reach by more than the flat elements can add.
fn html_depth(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut depth, mut deepest, mut at) = (0usize, 0usize, 0usize);
    while let Some(offset) = bytes[at..].iter().position(|&b| b == b'<') {
        at += offset + 1;
        let rest = &text[at..];
        if rest.starts_with('/') {
            depth = depth.saturating_sub(1);
            continue;
        }
        if rest.starts_with("!--") {
            at += rest.find("-->").map_or(rest.len(), |end| end + 3);
            continue;
        }
        let name_len = rest
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '-')
            .unwrap_or(rest.len());
        if name_len == 0 || !rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let name = rest[..name_len].to_ascii_lowercase();
        // Skip the whole tag (attributes included), so every byte is looked at once.
        let Some(end) = rest.find('>') else {
            break;
        };
        let self_closed = rest[..end].ends_with('/');
        at += end + 1;
        if !self_closed && !FLAT_HTML_ELEMENTS.contains(&name.as_str()) {
            depth += 1;
            deepest = deepest.max(depth);
        }
    }
    deepest
}

fn html_table(text: &str, table: &mut Table) -> Result<(), MarkupError> {
    if html_depth(text) > MAX_HTML_DEPTH {
        return Err(MarkupError::TooDeep(MAX_HTML_DEPTH));
    }
    let document = scraper::Html::parse_document(text);
    walk(
        document.tree.root().children(),
        |node| node.children(),
        |node, parent| html_node(node.value(), parent, table),
    )
}

fn html_node(
    node: &scraper::Node,
    parent: i64,
    table: &mut Table,
) -> Result<Option<i64>, MarkupError> {
    match node {
        scraper::Node::Element(element) => {
            let mut attributes = Vec::new();
            for (name, value) in element.attrs.iter() {
                Name::new(name.prefix.as_deref(), &name.local, Some(&name.ns))
                    .push_attribute(&mut attributes, value);
            }
            let name = &element.name;
            let name = Name::new(None, &name.local, Some(&name.ns));
            return table.element(parent, name, attributes).map(Some);
        }
        scraper::Node::Text(text) => table.leaf(TEXT, parent, "#text", Some(&text.text))?,
        scraper::Node::Comment(comment) => {
            table.leaf(COMMENT, parent, "#comment", Some(&comment.comment))?
        }
        _ => {}
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(text: &str, syntax: Syntax) -> Vec<Value> {
        let out: Value =
            serde_json::from_str(&parse(text, syntax, 1 << 20, 1000).unwrap()).unwrap();
        out["nodes"].as_array().unwrap().clone()
    }

    #[test]
    fn xml_keeps_prefixes_and_namespaces() {
        let n = nodes(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body a="1">x</s:Body></s:Envelope>"#,
            Syntax::Xml,
        );
        assert_eq!(n[0][2], json!("s:Envelope"));
        assert_eq!(n[0][3], json!("Envelope"));
        assert_eq!(n[0][4], json!("http://schemas.xmlsoap.org/soap/envelope/"));
        assert_eq!(n[1][1], json!(0));
        assert_eq!(n[1][7], json!(["a", "a", null, null, "1"]));
        assert_eq!(n[2][6], json!("x"));
    }

    #[test]
    fn prefixes_are_read_as_written() {
        // Two prefixes for one namespace: each element keeps its own.
        let n = nodes(
            r#"<a:r xmlns:a="urn:x" xmlns:b="urn:x"><b:c b:k="v"/></a:r>"#,
            Syntax::Xml,
        );
        assert_eq!(n[0][2], json!("a:r"));
        assert_eq!(n[1][2], json!("b:c"));
        assert_eq!(n[1][7], json!(["b:k", "k", "urn:x", "b", "v"]));
        // An element from an entity's replacement text still gets its prefix.
        let n = nodes(
            r#"<!DOCTYPE r [<!ENTITY e "<p:i xmlns:p='urn:p'>t</p:i>">]><r>&e;</r>"#,
            Syntax::Xml,
        );
        assert_eq!(n[1][2], json!("p:i"));
        assert_eq!(written_prefix("<x:y>", 1, "y"), Some(Some("x")));
        assert_eq!(written_prefix("<y>", 1, "y"), Some(None));
        assert_eq!(written_prefix("&e;", 0, "y"), None);
    }

    #[test]
    fn malformed_xml_is_an_error_with_position() {
        let e = parse("<a><b></a>", Syntax::Xml, 1 << 20, 1000).unwrap_err();
        assert!(
            matches!(&e, MarkupError::Malformed(m) if m.contains("1:")),
            "{e}"
        );
    }

    #[test]
    fn limits_are_enforced() {
        assert_eq!(
            parse("<a/>", Syntax::Xml, 3, 1000),
            Err(MarkupError::TooLarge { size: 4, limit: 3 })
        );
        let many = format!("<a>{}</a>", "<b/>".repeat(50));
        assert_eq!(
            parse(&many, Syntax::Xml, 1 << 20, 10),
            Err(MarkupError::TooManyNodes(10))
        );
        let html = format!("<p>{}</p>", "<b>x</b>".repeat(50));
        assert_eq!(
            parse(&html, Syntax::Html, 1 << 20, 10),
            Err(MarkupError::TooManyNodes(10))
        );
    }

    #[test]
    fn deep_nesting_does_not_exhaust_the_stack() {
        let depth = 200_000;
        let xml = format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth));
        let table = parse(&xml, Syntax::Xml, 1 << 22, depth + 1).expect("parses");
        assert!(table.contains(&format!("[1,{},\"a\"", depth - 2)));
        let html = "<div>".repeat(MAX_HTML_DEPTH + 1);
        assert_eq!(
            parse(&html, Syntax::Html, 1 << 22, 3 * depth),
            Err(MarkupError::TooDeep(MAX_HTML_DEPTH))
        );
        let html = "<div>".repeat(MAX_HTML_DEPTH - 10);
        assert!(parse(&html, Syntax::Html, 1 << 22, 3 * depth).is_ok());
    }

    #[test]
    fn html_depth_counts_what_nests() {
        assert_eq!(
            html_depth("<div><div/><p><p><ul><li><li></ul><br></div>"),
            2
        );
        assert_eq!(html_depth("<a title='x>y'><!-- <i><i> --></a>"), 1);
        let started = std::time::Instant::now();
        assert_eq!(html_depth(&"<a".repeat(1 << 20)), 0);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "not linear"
        );
    }

    #[test]
    fn html_is_lenient() {
        let n = nodes("<p>unclosed <b>bold", Syntax::Html);
        let names: Vec<&str> = n.iter().filter_map(|node| node[2].as_str()).collect();
        assert!(
            names.starts_with(&["html", "head", "body", "p"]),
            "{names:?}"
        );
    }

    #[test]
    fn mime_picks_the_parser() {
        assert_eq!(Syntax::from_mime("text/html; charset=utf-8"), Syntax::Html);
        assert_eq!(Syntax::from_mime("application/soap+xml"), Syntax::Xml);
        assert_eq!(Syntax::from_mime(""), Syntax::Xml);
    }
}
