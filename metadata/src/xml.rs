//! A small, strict XML reader for the few documents Azure hands a guest (the provisioning CD's
//! `ovf-env.xml`, the WireServer's versions and goal state): elements, their text, comments,
//! CDATA and the five predefined and numeric character references. A DOCTYPE is refused (no
//! entity can be defined, so none can expand), a tag closed out of order or an unknown entity is
//! an error, and names are matched by their local part (`wa:ProvisioningSection` is
//! `ProvisioningSection`), as the documents come with and without namespace prefixes.

/// An element: its local name, its text (the concatenated character data directly in it,
/// untrimmed) and its child elements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The children called `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The element down `path` of child names, each the first of its name.
    pub fn at(&self, path: &[&str]) -> Option<&Element> {
        path.iter().try_fold(self, |e, name| e.child(name))
    }

    /// The first element called `name` at any depth below this one (depth first, in order).
    pub fn find(&self, name: &str) -> Option<&Element> {
        self.children.iter().find_map(|c| if c.name == name { Some(c) } else { c.find(name) })
    }

    /// The trimmed text down `path`, when there is some.
    pub fn text_at(&self, path: &[&str]) -> Option<&str> {
        self.at(path).map(|e| e.text.trim()).filter(|t| !t.is_empty())
    }
}

/// Nesting deeper than this is refused (the documents are four or five levels deep).
const MAX_DEPTH: usize = 32;

/// Parses a whole document into its root element.
pub(crate) fn parse(doc: &str) -> Result<Element, String> {
    let mut p = Parser { s: doc.strip_prefix('\u{feff}').unwrap_or(doc), at: 0 };
    p.misc()?;
    if !p.rest().starts_with('<') {
        return Err(p.error("the document has no root element"));
    }
    let root = p.element(0)?;
    p.misc()?;
    if !p.rest().is_empty() {
        return Err(p.error("content after the root element"));
    }
    Ok(root)
}

struct Parser<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.at..]
    }

    fn error(&self, what: &str) -> String {
        let line = self.s[..self.at].matches('\n').count() + 1;
        format!("line {line}: {what}")
    }

    /// Skips whitespace, comments and processing instructions (the XML declaration).
    fn misc(&mut self) -> Result<(), String> {
        loop {
            let trimmed = self.rest().trim_start();
            self.at = self.s.len() - trimmed.len();
            if trimmed.starts_with("<!--") {
                self.skip_past("-->", "an unclosed comment")?;
            } else if trimmed.starts_with("<?") {
                self.skip_past("?>", "an unclosed processing instruction")?;
            } else if trimmed.starts_with("<!") {
                return Err(self.error("a DOCTYPE or declaration, which is not accepted"));
            } else {
                return Ok(());
            }
        }
    }

    fn skip_past(&mut self, end: &str, what: &str) -> Result<&'a str, String> {
        match self.rest().find(end) {
            Some(i) => {
                let skipped = &self.s[self.at..self.at + i];
                self.at += i + end.len();
                Ok(skipped)
            }
            None => Err(self.error(what)),
        }
    }

    fn name(&mut self) -> Result<String, String> {
        let len = self
            .rest()
            .find(|c: char| c.is_whitespace() || matches!(c, '>' | '/' | '=' | '<'))
            .unwrap_or(self.rest().len());
        let name = &self.rest()[..len];
        let valid = |c: char| c.is_alphanumeric() || matches!(c, '_' | ':' | '-' | '.');
        if name.is_empty() || !name.chars().all(valid) || name.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
            return Err(self.error(&format!(
                "`{}` is not an element or attribute name",
                name.chars().take(40).collect::<String>()
            )));
        }
        self.at += len;
        Ok(name.to_string())
    }

    /// An element starting at `<`.
    fn element(&mut self, depth: usize) -> Result<Element, String> {
        if depth >= MAX_DEPTH {
            return Err(self.error("elements nested too deep"));
        }
        self.at += 1;
        let qname = self.name()?;
        // Attributes: checked for form, values unused.
        loop {
            let trimmed = self.rest().trim_start();
            self.at = self.s.len() - trimmed.len();
            if let Some(r) = trimmed.strip_prefix("/>") {
                self.at = self.s.len() - r.len();
                return Ok(Element { name: local(&qname), ..Element::default() });
            }
            if let Some(r) = trimmed.strip_prefix('>') {
                self.at = self.s.len() - r.len();
                break;
            }
            self.name()?;
            let r = self.rest().trim_start();
            let Some(r) = r.strip_prefix('=') else { return Err(self.error("an attribute without a value")) };
            let r = r.trim_start();
            let quote = r.chars().next().filter(|c| *c == '"' || *c == '\'');
            let Some(quote) = quote else { return Err(self.error("an attribute value without quotes")) };
            self.at = self.s.len() - r.len() + 1;
            let value = self.skip_past(&quote.to_string(), "an unclosed attribute value")?;
            if value.contains('<') {
                return Err(self.error("`<` in an attribute value"));
            }
        }
        let mut element = Element { name: local(&qname), ..Element::default() };
        loop {
            let rest = self.rest();
            if rest.is_empty() {
                return Err(self.error(&format!("<{qname}> is not closed")));
            }
            if let Some(r) = rest.strip_prefix("</") {
                self.at = self.s.len() - r.len();
                let closing = self.name()?;
                if closing != qname {
                    return Err(self.error(&format!("</{closing}> closes <{qname}>")));
                }
                let r = self.rest().trim_start();
                let Some(r) = r.strip_prefix('>') else {
                    return Err(self.error(&format!("</{closing} is not closed")));
                };
                self.at = self.s.len() - r.len();
                return Ok(element);
            } else if rest.starts_with("<!--") {
                self.skip_past("-->", "an unclosed comment")?;
            } else if let Some(r) = rest.strip_prefix("<![CDATA[") {
                self.at = self.s.len() - r.len();
                let data = self.skip_past("]]>", "an unclosed CDATA section")?;
                element.text.push_str(data);
            } else if rest.starts_with("<?") {
                self.skip_past("?>", "an unclosed processing instruction")?;
            } else if rest.starts_with("<!") {
                return Err(self.error("a declaration inside an element"));
            } else if rest.starts_with('<') {
                element.children.push(self.element(depth + 1)?);
            } else {
                let len = rest.find('<').unwrap_or(rest.len());
                let text = &rest[..len];
                element.text.push_str(&unescape(text).map_err(|e| self.error(&e))?);
                self.at += len;
            }
        }
    }
}

/// The local part of a qualified name.
fn local(qname: &str) -> String {
    qname.rsplit(':').next().unwrap_or(qname).to_string()
}

/// Character data with its references replaced.
fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let Some(end) = rest[i..].find(';') else { return Err("an `&` that starts no reference".into()) };
        let entity = &rest[i + 1..i + end];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = entity.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32).ok_or_else(|| format!("unknown reference `&{entity};`"))?
            }
        };
        out.push(c);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `text` with `&`, `<` and `>` escaped, for element content.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_text_and_references() {
        let doc = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<!-- c -->\n<wa:Root xmlns:wa=\"urn:x\" a='1'>\
                   <A>one &amp; &lt;two&gt; &#65;&#x42;</A><B/><wa:C><![CDATA[<raw>]]></wa:C><A>second</A></wa:Root>\n";
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "Root");
        assert_eq!(root.text_at(&["A"]), Some("one & <two> AB"));
        assert_eq!(root.child("B").map(|b| b.text.as_str()), Some(""));
        assert_eq!(root.text_at(&["C"]), Some("<raw>"));
        assert_eq!(root.children_named("A").count(), 2);
        assert_eq!(root.find("C").map(|c| c.name.as_str()), Some("C"));
        assert_eq!(escape("a<b&c>"), "a&lt;b&amp;c&gt;");
    }

    #[test]
    fn what_is_not_well_formed_is_refused() {
        for (doc, why) in [
            ("<a><b></a></b>", "line 1: </a> closes <b>"),
            ("<a>", "line 1: <a> is not closed"),
            ("<a>&foo;</a>", "line 1: unknown reference `&foo;`"),
            ("<!DOCTYPE a [<!ENTITY x \"y\">]><a/>", "line 1: a DOCTYPE or declaration, which is not accepted"),
            ("<a/><b/>", "line 1: content after the root element"),
            ("text", "line 1: the document has no root element"),
            ("<a x=1/>", "line 1: an attribute value without quotes"),
            ("<a>\n<1b/></a>", "line 2: `1b` is not an element or attribute name"),
        ] {
            assert_eq!(parse(doc).unwrap_err(), why, "{doc}");
        }
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert!(parse(&deep).unwrap_err().contains("nested too deep"));
    }
}
