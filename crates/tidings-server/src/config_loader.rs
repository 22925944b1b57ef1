//! Layered configuration: defaults, then a TOML file, then `TIDINGS_*`
//! environment variables, then command-line flags.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
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
const SECTIONS: &[&str] = &["jwt", "connection", "api", "transports", "engine"];
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
    figment.merge(
        Env::prefixed("TIDINGS_")
            .filter(|key| !NOT_CONFIG.contains(&key.as_str().to_ascii_lowercase().as_str()))
            .map(|key| env_key_to_path(key.as_str()).into()),
    )
}

/// Loads the configuration from `file` (if any) and the environment.
pub fn load(file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
    figment(file).extract().map_err(Box::new)
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
        let mut parsed: Config = super::figment(Some(&path)).extract().unwrap();
        let default = Config::default();
        assert_eq!(
            parsed.effective_namespaces(),
            default.effective_namespaces()
        );
        parsed.namespaces.clear();
        assert_eq!(parsed, default);
    }
}
