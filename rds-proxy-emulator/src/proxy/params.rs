//! The session state RDS Proxy carries between database connections without pinning: the
//! startup parameters it accepts (besides `user` and `database`, which choose the pool).
//!
//! A client's values come from its startup packet; a database connection's are the ones it
//! was opened with or last restored to. When a client borrows a connection whose values
//! differ, [`SessionParams::restore_sql`] is run on it first.

/// The tracked parameters, in the order of [`SessionParams`]'s values.
pub(super) const TRACKED: [&str; 6] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "extra_float_digits",
    "search_path",
];

/// Values of the [`TRACKED`] parameters (`None`: the server's default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(super) struct SessionParams([Option<Box<str>>; 6]);

impl SessionParams {
    /// The tracked parameters of a startup packet (other names are ignored).
    pub(super) fn from_startup(params: &[(String, String)]) -> SessionParams {
        let mut values: [Option<Box<str>>; 6] = Default::default();
        for (k, v) in params {
            if let Some(i) = TRACKED.iter().position(|t| t == k) {
                values[i] = Some(v.as_str().into());
            }
        }
        SessionParams(values)
    }

    /// The value of tracked parameter `name`, when the client set it.
    pub(super) fn get(&self, name: &[u8]) -> Option<&str> {
        let i = TRACKED.iter().position(|t| t.as_bytes() == name)?;
        self.0[i].as_deref()
    }

    /// The SQL that turns a session with `self`'s values into one with `wanted`'s, or `None`
    /// when they are equal. Values are applied with `set_config`, which parses them as a
    /// startup packet's are (a `search_path` of `a, b` is two schemas).
    pub(super) fn restore_sql(&self, wanted: &SessionParams) -> Option<String> {
        let mut sets = Vec::new();
        let mut resets = String::new();
        for (i, name) in TRACKED.iter().enumerate() {
            if self.0[i] == wanted.0[i] {
                continue;
            }
            match &wanted.0[i] {
                Some(v) => sets.push(format!(
                    "pg_catalog.set_config({}, {}, false)",
                    quote_literal(name),
                    quote_literal(v)
                )),
                None => resets.push_str(&format!("RESET \"{name}\";")),
            }
        }
        if sets.is_empty() && resets.is_empty() {
            return None;
        }
        let mut sql = String::new();
        if !sets.is_empty() {
            sql.push_str("SELECT ");
            sql.push_str(&sets.join(", "));
            sql.push(';');
        }
        sql.push_str(&resets);
        Some(sql)
    }
}

/// A SQL string literal (standard_conforming_strings: only quotes are doubled; a value with
/// a backslash is written as an escape string so either setting reads it the same).
fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> SessionParams {
        SessionParams::from_startup(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn restore_sets_what_differs_and_resets_what_the_client_left_unset() {
        let backend = p(&[("application_name", "a"), ("TimeZone", "UTC")]);
        let client = p(&[
            ("application_name", "it's"),
            ("search_path", "app, public"),
            ("user", "ignored"),
        ]);
        assert_eq!(
            backend.restore_sql(&client).as_deref(),
            Some("SELECT pg_catalog.set_config('application_name', 'it''s', false), pg_catalog.set_config('search_path', 'app, public', false);RESET \"TimeZone\";")
        );
        assert_eq!(client.restore_sql(&client), None);
        assert_eq!(
            p(&[]).restore_sql(&p(&[("DateStyle", "a\\b")])).as_deref(),
            Some("SELECT pg_catalog.set_config('DateStyle', E'a\\\\b', false);")
        );
        assert_eq!(client.get(b"application_name"), Some("it's"));
        assert_eq!(client.get(b"TimeZone"), None);
    }
}
