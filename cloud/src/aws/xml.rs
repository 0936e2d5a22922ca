//! Just enough XML for EC2's Query API answers: elements, their text, nesting; attributes,
//! comments and processing instructions are passed over (EC2 answers use none that matter).
//! Not a general parser: no DTDs, no CDATA, only the five predefined entities and numeric ones.

/// An element: its name (any namespace prefix kept), its child elements and its text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// The element's name.
    pub name: String,
    /// Child elements, in order.
    pub children: Vec<Node>,
    /// The text directly inside it, entities decoded, trimmed.
    pub text: String,
}

impl Node {
    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child called `name`.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child called `name`.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// The first element called `name` at any depth, this one included (depth first).
    pub fn find(&self, name: &str) -> Option<&Node> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    /// The `item`s of the child list `name` (`imagesSet`, `tagSet`): EC2's way of listing.
    pub fn items<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.child(name).into_iter().flat_map(|list| list.children("item"))
    }
}

/// Parses `text` into its root element, or says where it stopped making sense.
pub fn parse(text: &str) -> Result<Node, String> {
    let mut stack: Vec<Node> = vec![Node::default()];
    let mut rest = text;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            append_text(&mut stack, rest)?;
            break;
        };
        append_text(&mut stack, &rest[..lt])?;
        rest = &rest[lt..];
        let close = |end: &str| rest.find(end).ok_or_else(|| format!("unterminated {}", start_of(rest, 20)));
        if rest.starts_with("<?") {
            rest = &rest[close("?>")? + 2..];
        } else if rest.starts_with("<!--") {
            rest = &rest[close("-->")? + 3..];
        } else if rest.starts_with("<!") {
            rest = &rest[close(">")? + 1..];
        } else if let Some(after) = rest.strip_prefix("</") {
            let gt = after.find('>').ok_or("unterminated end tag")?;
            let name = after[..gt].trim();
            let node = stack.pop().filter(|n| n.name == name && !stack.is_empty());
            let Some(node) = node else { return Err(format!("unexpected </{name}>")) };
            if let Some(parent) = stack.last_mut() {
                parent.children.push(node);
            }
            rest = &after[gt + 1..];
        } else {
            let gt = rest.find('>').ok_or("unterminated start tag")?;
            let inner = &rest[1..gt];
            let (inner, empty) = match inner.strip_suffix('/') {
                Some(i) => (i, true),
                None => (inner, false),
            };
            let name = inner.split_whitespace().next().ok_or("a tag without a name")?.to_string();
            let node = Node { name, ..Node::default() };
            if empty {
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(node);
                }
            } else {
                stack.push(node);
            }
            rest = &rest[gt + 1..];
        }
    }
    if stack.len() != 1 {
        return Err(format!("<{}> is not closed", stack.last().map_or("", |n| n.name.as_str())));
    }
    let mut top = stack.pop().unwrap_or_default();
    match top.children.len() {
        1 => Ok(top.children.remove(0)),
        n => Err(format!("{n} root elements")),
    }
}

fn append_text(stack: &mut [Node], raw: &str) -> Result<(), String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(());
    }
    let node = stack.last_mut().ok_or("text outside any element")?;
    node.text.push_str(&decode(raw));
    Ok(())
}

/// The first `n` bytes of `s` or fewer, cut where a character ends (an error shows no more).
fn start_of(s: &str, n: usize) -> &str {
    let mut end = s.len().min(n);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `raw` with its entities decoded (an unknown one kept as written).
pub fn decode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';') else { break };
        let entity = &rest[1..semi];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_lists_and_entities_are_read() {
        let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>r-1</requestId>
    <imagesSet>
        <item><imageId>ami-1</imageId><name>a &amp; b</name>
            <blockDeviceMapping><item><deviceName>/dev/xvda</deviceName><ebs><snapshotId>snap-1</snapshotId></ebs></item></blockDeviceMapping>
            <tagSet><item><key>k</key><value>&#x41;&#66;</value></item></tagSet>
            <kernelId/>
        </item>
        <item><imageId>ami-2</imageId></item>
    </imagesSet>
</DescribeImagesResponse>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "DescribeImagesResponse");
        let images: Vec<_> = root.items("imagesSet").collect();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].text_of("name"), Some("a & b"));
        let bdm: Vec<_> = images[0].items("blockDeviceMapping").collect();
        assert_eq!(bdm[0].child("ebs").and_then(|e| e.text_of("snapshotId")), Some("snap-1"));
        assert_eq!(images[0].items("tagSet").next().unwrap().text_of("value"), Some("AB"));
        assert_eq!(images[1].text_of("imageId"), Some("ami-2"));
        assert_eq!(root.find("snapshotId").map(|n| n.text.as_str()), Some("snap-1"));
    }

    #[test]
    fn broken_documents_are_refused() {
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("<a>").is_err());
        assert!(parse("<a/><b/>").is_err());
        assert!(parse("plain text").is_err());
        assert_eq!(decode("1 &lt; 2 &unknown; &"), "1 < 2 &unknown; &");
        // An unterminated tag of non-ASCII text: refused, not a panic cutting a character.
        let e = parse("<!--xéééééééééééé").unwrap_err();
        assert_eq!(e, "unterminated <!--xééééééé");
    }
}
