//! Layered configuration: defaults, then a TOML file, then `TIDINGS_*`
//! environment variables, then command-line flags.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use tidings::config::Config;

/// Top-level keys whose names start like a section name (`api_key` vs `[api]`).
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "node",
    "api_key",
    "allowed_origins",
    "console",
    "builtin_namespaces",
];
/// Sections reachable as `TIDINGS_<SECTION>_<KEY>` (or `TIDINGS_<SECTION>__<KEY>`).
const SECTIONS: &[&str] = &[
    "jwt",
    "connection",
    "api",
    "transports",
    "websocket",
    "engine",
];
/// Variables the binary reads itself rather than as config keys.
const NOT_CONFIG: &[&str] = &["config", "log_format", "log_level"];

/// Maps an environment key (lowercased, prefix removed) to a config path.
fn env_key_to_path(key: &str) -> String {
    let key = key.to_ascii_lowercase();
    if TOP_LEVEL_KEYS.contains(&key.as_str()) || key.contains("__") {
        return key.replace("__", ".");
    }
    for section in SECTIONS {
        if let Some(rest) = key.strip_prefix(section).and_then(|r| r.strip_prefix('_')) {
            return format!("{section}.{rest}");
        }
    }
    key
}

/// The figment for `file` (if any) and the environment.
pub fn figment(file: Option<&Path>) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    figment.merge(EnvText(
        Env::prefixed("TIDINGS_")
            .filter(|key| !NOT_CONFIG.contains(&key.as_str().to_ascii_lowercase().as_str()))
            .map(|key| env_key_to_path(key.as_str()).into()),
    ))
}

/// `TIDINGS_*` variables with their values kept as text. Figment's `Env` reads
/// `TIDINGS_NODE=1` or an all-digit `TIDINGS_API_KEY` as a number, which a
/// string option then refuses; here only lists and tables (`["a", "b"]`) are
/// parsed, and numbers and booleans are read from the text when the option
/// wants one (`extract_lossy`).
struct EnvText(Env);

impl Provider for EnvText {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut values = Dict::new();
        for (key, text) in self.0.iter() {
            let value = match text.parse::<Value>() {
                Ok(nested @ (Value::Array(..) | Value::Dict(..))) => nested,
                _ => Value::from(text),
            };
            if let Value::Dict(_, nested) = figment::util::nest(key.as_str(), value) {
                merge_into(&mut values, nested);
            }
        }
        Ok(Profile::Default.collect(values))
    }
}

/// Adds `from` to `into`, table by table (`TIDINGS_API_KEY` and
/// `TIDINGS_API__MAX_BODY_SIZE` both land under their own keys).
fn merge_into(into: &mut Dict, from: Dict) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Dict(_, existing)), Value::Dict(_, nested)) => {
                merge_into(existing, nested)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Loads the configuration from `file` (if any) and the environment.
///
/// Each error names where the bad value came from: the file (by its absolute
/// path) and the key, or the environment variable, with the expected format.
pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
    if let Some(file) = file {
        // Checked here so that a missing file is one plain line, not figment's.
        std::fs::metadata(file).map_err(|err| {
            anyhow::anyhow!(
                "cannot read the configuration file {}: {err}",
                absolute(file).display()
            )
        })?;
    }
    figment(file).extract_lossy().map_err(|err| {
        let messages: Vec<String> = err.into_iter().map(|e| one_line(&describe(&e))).collect();
        anyhow::anyhow!(messages.join("; "))
    })
}

/// `message` on one line: a TOML parse error comes as several, with a
/// snippet of the file (`1 | listen = `, a caret line), which is dropped
/// since the error names the line and column; the other lines are joined.
fn one_line(message: &str) -> String {
    let is_snippet = |line: &str| {
        line.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ')
            .starts_with('|')
    };
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !is_snippet(line))
        .collect::<Vec<_>>()
        .join(": ")
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// One figment error as a sentence that names its source.
fn describe(err: &figment::Error) -> String {
    let mut path = err.path.as_slice();
    if path.first().is_some_and(|p| p == "default") {
        path = &path[1..];
    }
    let key = path.join(".");
    let problem = problem(&err.kind, &key);
    let file = err
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .and_then(|s| s.file_path());
    if let Some(file) = file {
        let file = absolute(file);
        return if key.is_empty() {
            format!("{}: {problem}", file.display())
        } else {
            format!("{}: {key}: {problem}", file.display())
        };
    }
    let from_env = err
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"));
    if from_env {
        if let Some(variable) = env_variable_for(&key) {
            return format!("environment variable {variable}: {problem}");
        }
    }
    if key.is_empty() {
        format!("configuration: {problem}")
    } else {
        format!("configuration key {key}: {problem}")
    }
}

/// The `TIDINGS_*` variable that sets `key`, if one is set.
fn env_variable_for(key: &str) -> Option<String> {
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .find(|name| {
            name.strip_prefix("TIDINGS_")
                .is_some_and(|rest| env_key_to_path(rest) == key)
        })
}

/// What is wrong, in words: the value found (hidden for secrets) and the
/// format expected, with examples where the type name alone says little.
fn problem(kind: &figment::error::Kind, key: &str) -> String {
    use figment::error::Kind;
    let hidden = key.contains("secret") || key == "api_key";
    let found = |actual: &figment::error::Actual| {
        if hidden {
            "a value".to_owned()
        } else {
            actual.to_string()
        }
    };
    match kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!(
                "found {}, expected {}",
                found(actual),
                expected_format(expected)
            )
        }
        Kind::UnknownField(found, expected) => {
            let section = key
                .rsplit_once('.')
                .map_or("at the top level".to_owned(), |(s, _)| format!("in [{s}]"));
            format!(
                "unknown key `{found}` {section}; the keys there are: {}",
                expected.join(", ")
            )
        }
        Kind::UnknownVariant(found, expected) => {
            format!(
                "unknown value `{found}`; expected one of: {}",
                expected.join(", ")
            )
        }
        // `listen` fails in the address parser, whose message names no format.
        other if key == "listen" => format!(
            "{}, expected an address such as `127.0.0.1:8000`",
            other.to_string().trim_end()
        ),
        other => other.to_string().trim_end().to_owned(),
    }
}

/// serde's name for an expected type, with the format spelled out.
fn expected_format(expected: &str) -> String {
    if expected.contains("duration") {
        return format!("{expected} such as `30s`, `500ms` or `1m 30s`");
    }
    match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number such as `1024`".to_owned(),
        "a boolean" | "bool" => {
            "`true` or `false` (in a `TIDINGS_*` variable also `yes`/`no`, `on`/`off`, `1`/`0`)"
                .to_owned()
        }
        "socket address" | "a socket address" => "an address such as `127.0.0.1:8000`".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::env_key_to_path;

    #[test]
    fn env_keys_map_to_sections() {
        assert_eq!(env_key_to_path("JWT_SECRET"), "jwt.secret");
        assert_eq!(
            env_key_to_path("JWT_PUBLIC_KEY_FILE"),
            "jwt.public_key_file"
        );
        assert_eq!(env_key_to_path("API_KEY"), "api_key");
        assert_eq!(env_key_to_path("API_MAX_BODY_SIZE"), "api.max_body_size");
        assert_eq!(
            env_key_to_path("CONNECTION__HEARTBEAT"),
            "connection.heartbeat"
        );
        assert_eq!(env_key_to_path("LISTEN"), "listen");
        assert_eq!(
            env_key_to_path("TRANSPORTS_WEBSOCKET"),
            "transports.websocket"
        );
        assert_eq!(
            env_key_to_path("WEBSOCKET_COMPRESSION_MIN_SIZE"),
            "websocket.compression_min_size"
        );
        assert_eq!(
            env_key_to_path("ENGINE_POSITION_TTL"),
            "engine.position_ttl"
        );
    }
}

#[cfg(test)]
mod example_tests {
    use std::path::Path;

    use tidings::config::Config;

    #[test]
    fn example_config_lists_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tidings.example.toml");
        let mut parsed: Config = super::figment(Some(&path)).extract_lossy().unwrap();
        let default = Config::default();
        assert_eq!(
            parsed.effective_namespaces(),
            default.effective_namespaces()
        );
        parsed.namespaces.clear();
        assert_eq!(parsed, default);
    }
}
