//! Key paths (`http.max_body`, `route[0].to`) and where a value came
//! from (file line, `SIGMA_*` variable, defaults), for the messages of
//! [`ConfigError`]. Config assembly, above every stage (T → H → A →
//! router → destination).

use super::error::{ConfigError, ConfigErrorKind, Origin};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

pub(super) type KeyPath = Vec<Seg>;

pub(super) fn key(k: &str) -> Seg {
    Seg::Key(k.to_owned())
}

/// `http.max_body`, `route[0].to`.
pub(super) fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// What an error needs to say where it comes from.
pub(super) struct Sources<'a> {
    /// The file's name, text and span-keeping parse (for line numbers).
    pub(super) file: Option<(&'a str, &'a str, toml::Spanned<toml::de::DeTable<'a>>)>,
    /// Key paths set from the environment, with the variable that set them.
    pub(super) env: Vec<(KeyPath, String)>,
}

impl Sources<'_> {
    pub(super) fn error(&self, path: KeyPath, kind: ConfigErrorKind) -> ConfigError {
        let from_env = self
            .env
            .iter()
            .rev()
            .find(|(p, _)| path.starts_with(p))
            .map(|(_, var)| var.clone());
        let origin = match (from_env, &self.file) {
            (Some(var), _) => Origin::Env { var },
            (None, Some((name, text, doc))) => Origin::File {
                name: (*name).to_owned(),
                line: span_of(doc, &path).and_then(|start| line_at(text, start)),
            },
            (None, None) => Origin::Defaults,
        };
        ConfigError {
            origin,
            path: render(&path),
            kind,
        }
    }
}

/// 1-based line of byte offset `at`.
pub(super) fn line_at(text: &str, at: usize) -> Option<usize> {
    Some(text.get(..at)?.matches('\n').count() + 1)
}

/// Start of the key (or array element) that `path` names in the document.
fn span_of(doc: &toml::Spanned<toml::de::DeTable<'_>>, path: &[Seg]) -> Option<usize> {
    let mut table = Some(doc.get_ref());
    let mut value: Option<&toml::Spanned<toml::de::DeValue<'_>>> = None;
    let mut start = None;
    for seg in path {
        match seg {
            Seg::Key(k) => {
                let (spanned_key, v) = table?.get_key_value(k.as_str())?;
                start = Some(spanned_key.span().start);
                value = Some(v);
            }
            Seg::Index(i) => {
                let v = value?.get_ref().as_array()?.get(*i)?;
                start = Some(v.span().start);
                value = Some(v);
            }
        }
        table = value.and_then(|v| v.get_ref().as_table());
    }
    start
}
