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
    for child in document.root().children() {
        xml_node(child, -1, table)?;
    }
    Ok(())
}

fn xml_node(
    node: roxmltree::Node<'_, '_>,
    parent: i64,
    table: &mut Table,
) -> Result<(), MarkupError> {
    match node.node_type() {
        roxmltree::NodeType::Element => {
            let mut attributes = Vec::new();
            for attribute in node.attributes() {
                let prefix = attribute.namespace().and_then(|ns| node.lookup_prefix(ns));
                Name::new(prefix, attribute.name(), attribute.namespace())
                    .push_attribute(&mut attributes, attribute.value());
            }
            let tag = node.tag_name();
            let prefix = tag.namespace().and_then(|ns| node.lookup_prefix(ns));
            let index = table.element(
                parent,
                Name::new(prefix, tag.name(), tag.namespace()),
                attributes,
            )?;
            for child in node.children() {
                xml_node(child, index, table)?;
            }
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
    Ok(())
}

fn html_table(text: &str, table: &mut Table) -> Result<(), MarkupError> {
    let document = scraper::Html::parse_document(text);
    for child in document.tree.root().children() {
        html_node(child, -1, table)?;
    }
    Ok(())
}

fn html_node(
    node: ego_tree::NodeRef<'_, scraper::Node>,
    parent: i64,
    table: &mut Table,
) -> Result<(), MarkupError> {
    match node.value() {
        scraper::Node::Element(element) => {
            let mut attributes = Vec::new();
            for (name, value) in element.attrs.iter() {
                Name::new(name.prefix.as_deref(), &name.local, Some(&name.ns))
                    .push_attribute(&mut attributes, value);
            }
            let name = &element.name;
            let index = table.element(
                parent,
                Name::new(None, &name.local, Some(&name.ns)),
                attributes,
            )?;
            for child in node.children() {
                html_node(child, index, table)?;
            }
        }
        scraper::Node::Text(text) => table.leaf(TEXT, parent, "#text", Some(&text.text))?,
        scraper::Node::Comment(comment) => {
            table.leaf(COMMENT, parent, "#comment", Some(&comment.comment))?
        }
        _ => {}
    }
    Ok(())
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
