//! Reading a configuration file: where each field is (file, line, dotted path), and every problem
//! found reported at once.

use super::*;

/// Where in the file a problem is: `camera[0].zone[2].polygon`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// `alerts.route[0].url` as a field path.
pub(crate) fn field_path(dotted: &str) -> FieldPath {
    let mut at = FieldPath(Vec::new());
    for part in dotted.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            at = at.key(&rest[..i]);
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                if let Ok(n) = rest[1..end].parse() {
                    at = at.index(n);
                }
                rest = &rest[end + 1..];
            }
        } else {
            at = at.key(rest);
        }
    }
    at
}

pub(crate) fn path(keys: &[&str]) -> FieldPath {
    FieldPath(keys.iter().map(|k| Seg::Key((*k).to_string())).collect())
}

impl FieldPath {
    pub fn key(mut self, k: &str) -> Self {
        self.0.push(Seg::Key(k.to_string()));
        self
    }

    pub fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }

    /// Appends a dotted path as serde reports it (`inner.a`).
    pub(crate) fn dotted(mut self, d: &str) -> Self {
        for k in d.split('.').filter(|k| !k.is_empty()) {
            self.0.push(Seg::Key(k.to_string()));
        }
        self
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigProblem {
    pub file: PathBuf,
    /// 1-based, when known.
    pub line: Option<usize>,
    /// Dotted path of the field, when known.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration ({} problem{}):\n{}", problems.len(), if problems.len() == 1 { "" } else { "s" },
        problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<ConfigProblem> },
}

/// Collects problems while a file is read, and finds their lines.
pub(crate) struct Reader<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
    pub(crate) doc: toml_edit::ImDocument<&'a str>,
    pub(crate) problems: Vec<ConfigProblem>,
}

impl Reader<'_> {
    pub(crate) fn problem(&mut self, at: FieldPath, message: impl Into<String>) {
        let line = self.line_of(&at);
        let field = (!at.0.is_empty()).then(|| at.to_string());
        self.problems.push(ConfigProblem {
            file: self.file.to_path_buf(),
            line,
            field,
            message: message.into(),
        });
    }

    /// The line of the deepest part of `at` that exists in the document.
    pub(crate) fn line_of(&self, at: &FieldPath) -> Option<usize> {
        use toml_edit::{Item, Table, Value};
        #[derive(Clone, Copy)]
        enum Node<'d> {
            Table(&'d Table),
            Value(&'d Value),
            Other,
        }
        fn of_item(i: &Item) -> Node<'_> {
            match i {
                Item::Table(t) => Node::Table(t),
                Item::Value(v) => Node::Value(v),
                _ => Node::Other,
            }
        }
        let mut node = Node::Table(self.doc.as_table());
        let mut parent_item: Option<&Item> = None;
        let mut span = None;
        for seg in &at.0 {
            let next = match (node, seg) {
                (Node::Table(t), Seg::Key(k)) => {
                    span = t.key(k).and_then(|k| k.span()).map(|s| s.start).or(span);
                    t.get(k).map(|i| {
                        parent_item = Some(i);
                        of_item(i)
                    })
                }
                (Node::Value(Value::InlineTable(t)), Seg::Key(k)) => {
                    span = t.key(k).and_then(|k| k.span()).map(|s| s.start).or(span);
                    t.get(k).map(Node::Value)
                }
                (Node::Value(Value::Array(a)), Seg::Index(i)) => a.get(*i).map(|v| {
                    span = v.span().map(|s| s.start).or(span);
                    Node::Value(v)
                }),
                (Node::Other, Seg::Index(i)) => match parent_item {
                    Some(Item::ArrayOfTables(a)) => a.get(*i).map(|t| {
                        span = t.span().map(|s| s.start).or(span);
                        Node::Table(t)
                    }),
                    _ => None,
                },
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        span.map(|s| line_of(self.text, s))
    }
}

impl Reader<'_> {
    /// Deserialises one value; on failure records where and why, and returns `None`.
    pub(crate) fn value<T: DeserializeOwned>(&mut self, at: FieldPath, v: &toml::Value) -> Option<T> {
        match v.clone().try_into::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                let msg = e.to_string();
                let mut lines = msg.lines();
                let first = lines.next().unwrap_or("invalid value").trim().to_string();
                // serde names the offending field: "unknown field `x`" or a trailing "in `a.b`".
                let field = lines.find_map(|l| {
                    l.trim()
                        .strip_prefix("in `")
                        .and_then(|r| r.strip_suffix('`'))
                        .map(str::to_string)
                });
                let unknown = first
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                    .map(str::to_string);
                let missing = first.starts_with("missing field");
                let at = match (unknown, field) {
                    (Some(k), _) => at.key(&k),
                    (None, Some(f)) => at.dotted(&f),
                    (None, None) => at,
                };
                let message = if missing { format!("{first} (required)") } else { first };
                self.problem(at, message);
                None
            }
        }
    }

    /// Each of a camera's `[[camera.KEY]]` tables on its own, so one bad entry does not hide the others.
    pub(crate) fn items<T: DeserializeOwned>(&mut self, at: &FieldPath, key: &str, values: &[toml::Value]) -> Vec<T> {
        values
            .iter()
            .enumerate()
            .filter_map(|(j, v)| self.value(at.clone().key(key).index(j), v))
            .collect()
    }

    pub(crate) fn cameras(&mut self, v: &toml::Value) -> Vec<CameraConfig> {
        let Some(items) = v.as_array() else {
            self.problem(path(&["camera"]), "must be a list of [[camera]] tables");
            return Vec::new();
        };
        let mut cams = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = path(&["camera"]).index(i);
            let Some(raw) = self.value::<CameraRaw>(at.clone(), item) else {
                continue;
            };
            let zones = self.items(&at, "zone", &raw.zone);
            let lines = self.items(&at, "line", &raw.line);
            let rules = self.items(&at, "rule", &raw.rule);
            cams.push(CameraConfig {
                name: raw.name,
                source: raw.source,
                detect_fps: raw.detect_fps,
                score_threshold: raw.score_threshold,
                looping: raw.looping,
                zones,
                lines,
                rules,
            });
        }
        cams
    }
}

/// The TOML parser's reason, or one of ours where it gives none (a control character, even in a
/// comment, comes back without a message; found by the `node_config` fuzz target).
pub(crate) fn toml_message(m: &str) -> String {
    match m.trim() {
        "" => "invalid character: TOML allows no control characters, not even in comments".to_string(),
        m => m.to_string(),
    }
}

pub(crate) fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}
