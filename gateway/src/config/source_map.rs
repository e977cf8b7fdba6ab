//! Maps a key path (`machines[1].tags[0].address`) to a line of the TOML
//! file it came from, so every configuration problem names key and line.

use std::ops::Range;

/// The parsed document, kept only for its spans.
pub struct SourceMap {
    text: String,
    doc: toml_edit::Document<String>,
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// Splits `machines[1].tags[0].address` into segments. Keys are plain here
/// (our schema has no dotted or quoted key names).
pub fn parse_path(path: &str) -> Vec<PathSegment> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            let key = &rest[..open];
            if !key.is_empty() {
                out.push(PathSegment::Key(key.to_string()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(i) = stripped[..close].parse() {
                    out.push(PathSegment::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else {
            out.push(PathSegment::Key(rest.to_string()));
        }
    }
    out
}

impl SourceMap {
    pub fn parse(text: &str) -> Result<Self, toml_edit::TomlError> {
        let doc = toml_edit::Document::parse(text.to_string())?;
        Ok(Self {
            text: text.to_string(),
            doc,
        })
    }

    /// 1-based line number of a byte offset.
    pub fn line_of(text: &str, offset: usize) -> usize {
        let end = offset.min(text.len());
        text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The line of the deepest part of `path` that exists in the file: the key
    /// itself if present, else the table that should have held it.
    pub fn line(&self, path: &str) -> Option<usize> {
        self.span(&parse_path(path))
            .map(|span| Self::line_of(&self.text, span.start))
    }

    fn span(&self, segments: &[PathSegment]) -> Option<Range<usize>> {
        span_below(Node::Item(self.doc.as_item()), segments, None)
    }
}

/// Where the walk stands: an item, or a table of an array of tables (which
/// toml_edit hands out as a `Table`, not an `Item`).
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Table(&'a dyn toml_edit::TableLike),
}

/// Walks `segments` down from `node`, remembering the span of the deepest
/// part found.
fn span_below(
    node: Node<'_>,
    segments: &[PathSegment],
    best: Option<Range<usize>>,
) -> Option<Range<usize>> {
    let Some((segment, rest)) = segments.split_first() else {
        return best;
    };
    match (segment, node) {
        (PathSegment::Key(key), node) => {
            let table = match node {
                Node::Item(item) => item.as_table_like(),
                Node::Table(table) => Some(table),
            };
            let Some((k, next)) = table.and_then(|t| t.get_key_value(key)) else {
                return best;
            };
            span_below(Node::Item(next), rest, k.span().or(best))
        }
        (PathSegment::Index(i), Node::Item(item)) => {
            if let Some(table) = item.as_array_of_tables().and_then(|a| a.get(*i)) {
                span_below(Node::Table(table), rest, table.span().or(best))
            } else if let Some(value) = item.as_array().and_then(|a| a.get(*i)) {
                value.span().or(best)
            } else {
                best
            }
        }
        (PathSegment::Index(_), Node::Table(_)) => best,
    }
}
