//! Settings layering, the same rules in both daemons: command-line flags >
//! environment > the `--config` TOML file > defaults. Each daemon reads the
//! sources into its own `FileConfig` shape (every key optional, unknown keys
//! refused by serde); [`merge`] lays them over the defaults key by key,
//! remembering where each value came from ([`Origin`]). Validation stays
//! with each daemon; a refused value is a [`BadValue`], which names the
//! source, the key, the value and the reason (`relay.toml: key
//! "station_rate": value -1: must be between 0 and 1000000`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The config file (its path).
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag.
    Flag,
}

impl Origin {
    /// Precedence rank (higher wins).
    pub fn rank(&self) -> u8 {
        match self {
            Origin::Default => 0,
            Origin::File(_) => 1,
            Origin::Env(_) => 2,
            Origin::Flag => 3,
        }
    }

    /// The source as an error names it: the file's path, `environment
    /// WHELM_...`, `flag --...`.
    pub fn describe(&self, key: &str) -> String {
        match self {
            Origin::Default => "default".to_owned(),
            Origin::File(p) => p.display().to_string(),
            Origin::Env(v) => format!("environment {v}"),
            Origin::Flag => format!("flag --{}", key.replace('_', "-")),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env(v) => write!(f, "environment {v}"),
            Origin::Flag => f.write_str("flag"),
        }
    }
}

/// A value that was refused.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: key \"{key}\": value {value}: {reason}")]
pub struct BadValue {
    /// Where it came from (`relay.toml`, `environment WHELM_...`, `flag --...`).
    pub origin: String,
    /// The key.
    pub key: String,
    /// The value as written (TOML form).
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

/// Reads and parses a TOML file (unknown keys refused when `T` says so).
pub fn load_file<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    parse(&text).with_context(|| format!("config file {}", path.display()))
}

/// Parses TOML text (unknown keys refused when `T` says so).
pub fn parse<T: DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
}

/// The keys set, as a TOML table.
pub fn table<T: Serialize>(config: &T) -> anyhow::Result<toml::Table> {
    toml::Table::try_from(config).context("internal: config to table")
}

/// Lays `layers` (lowest precedence first) over `defaults`, key by key, and
/// returns the merged table with each key's origin. An [`Origin::Env`]
/// layer is named per key by `env_name` (the variable that set it).
pub fn merge(
    defaults: toml::Table,
    layers: impl IntoIterator<Item = (toml::Table, Origin)>,
    env_name: impl Fn(&str) -> &'static str,
) -> (toml::Table, BTreeMap<String, Origin>) {
    let mut table = defaults;
    let mut origins: BTreeMap<String, Origin> =
        table.keys().map(|k| (k.clone(), Origin::Default)).collect();
    for (layer, origin) in layers {
        for (k, v) in layer {
            let origin = match origin {
                Origin::Env(_) => Origin::Env(env_name(&k)),
                ref o => o.clone(),
            };
            origins.insert(k.clone(), origin);
            table.insert(k, v);
        }
    }
    (table, origins)
}

/// The effective configuration as TOML, headed `# {program} effective
/// configuration`, each key commented with its source.
pub fn effective_toml(
    program: &str,
    effective: &BTreeMap<String, (toml::Value, Origin)>,
) -> String {
    let mut out = format!("# {program} effective configuration\n");
    for (k, (v, origin)) in effective {
        out.push_str(&format!("{k} = {v}  # {origin}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> toml::Table {
        parse(text).unwrap()
    }

    #[test]
    fn later_layers_win_and_each_key_keeps_its_origin() {
        let (table, origins) = merge(
            t("a = 1\nb = 1\nc = 1\nd = 1\n"),
            [
                (t("b = 2\nc = 2\n"), Origin::File("x.toml".into())),
                (t("c = 3\nd = 3\n"), Origin::Env("")),
                (t("d = 4\n"), Origin::Flag),
            ],
            |k| if k == "c" { "WHELM_C" } else { "other" },
        );
        assert_eq!(table, t("a = 1\nb = 2\nc = 3\nd = 4\n"));
        assert_eq!(origins["a"], Origin::Default);
        assert_eq!(origins["b"], Origin::File("x.toml".into()));
        assert_eq!(origins["c"], Origin::Env("WHELM_C"));
        assert_eq!(origins["d"], Origin::Flag);
        let e: BTreeMap<_, _> = table
            .into_iter()
            .map(|(k, v)| {
                let o = origins[&k].clone();
                (k, (v, o))
            })
            .collect();
        assert_eq!(
            effective_toml("whelm-x", &e),
            "# whelm-x effective configuration\na = 1  # default\nb = 2  # file x.toml\n\
             c = 3  # environment WHELM_C\nd = 4  # flag\n"
        );
    }

    #[test]
    fn bad_value_names_source_key_value_and_reason() {
        let b = BadValue {
            origin: Origin::Flag.describe("station_rate"),
            key: "station_rate".into(),
            value: "-1".into(),
            reason: "must be between 0 and 1000000".into(),
        };
        assert_eq!(
            b.to_string(),
            "flag --station-rate: key \"station_rate\": value -1: must be between 0 and 1000000"
        );
    }
}
