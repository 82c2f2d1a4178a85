//! CLI contexts: named hubs the CLI talks to, each a URL and the file that holds its token, kept
//! in `config.toml` (`$BERTH_CONFIG`, else `$XDG_CONFIG_HOME/berth/config.toml`, else
//! `~/.config/berth/config.toml`). `berth up` saves one named `local`; `berth login URL` saves
//! another; `berth context list|use|remove` manage them. `--url`/`BERTH_URL` and
//! `--token`/`BERTH_TOKEN` win over the current context.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a hub is when nothing says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7700";

/// The token `berth up` writes when run from the current directory with its defaults, read when
/// no context exists (how the CLI found its hub before contexts).
const DEFAULT_TOKEN_FILE: &str = "berth-data/admin-token";

/// One hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// The hub's address.
    pub url: String,
    /// The file holding the token (mode 0600).
    pub token_file: PathBuf,
    /// The CA certificate to trust for the hub's TLS (a hub with its own CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Where the CLI finds its hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The hub's address.
    pub url: String,
    /// The token.
    pub token: String,
    /// The CA to trust for its TLS besides the system's: `BERTH_CA_FILE`, else the context's.
    pub ca_file: Option<PathBuf>,
}

/// The contents of `config.toml`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Contexts {
    /// The context commands use when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Every saved context by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// The path of `config.toml`, or an error that says which variable to set.
pub fn config_path() -> Result<PathBuf, String> {
    let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(path) = var("BERTH_CONFIG") {
        return Ok(PathBuf::from(path));
    }
    let base = var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".config")))
        .ok_or("cannot tell where the CLI's configuration goes: set HOME, XDG_CONFIG_HOME or BERTH_CONFIG")?;
    Ok(base.join("berth").join("config.toml"))
}

impl Contexts {
    /// Reads the file at `path`; a missing file is no contexts.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|err| {
                format!(
                    "{} is not a valid CLI configuration: {err}; fix or remove it",
                    path.display()
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(format!("cannot read {}: {err}", path.display())),
        }
    }

    /// Writes the file at `path` whole (a reader never sees half of it), mode 0600 in a 0700
    /// directory.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = toml::to_string(self).map_err(|err| err.to_string())?;
        write_private(path, text.as_bytes())
    }

    /// The context `name` names, or the current one; none when neither exists.
    pub fn chosen(&self, name: Option<&str>) -> Result<Option<(&str, &Context)>, String> {
        let Some(name) = name.or(self.current.as_deref()) else {
            return Ok(None);
        };
        match self.contexts.get_key_value(name) {
            Some((name, context)) => Ok(Some((name.as_str(), context))),
            None => Err(format!(
                "no context named {name:?}; known: {}. `berth login URL --name {name}` adds it",
                self.names()
            )),
        }
    }

    /// The names, comma-separated, or `none`.
    pub fn names(&self) -> String {
        if self.contexts.is_empty() {
            "none".to_owned()
        } else {
            self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, readable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)
            .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(&temporary)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|err| format!("cannot write {}: {err}", path.display()))
}

/// Saves (or replaces) the context `name` and makes it current; returns the file written.
pub fn remember(name: &str, context: Context) -> Result<PathBuf, String> {
    let path = config_path()?;
    let mut contexts = Contexts::load(&path)?;
    contexts.contexts.insert(name.to_owned(), context);
    contexts.current = Some(name.to_owned());
    contexts.save(&path)?;
    Ok(path)
}

/// Where a token saved by `berth login` for context `name` lives: beside `config.toml`.
pub fn token_path(config: &Path, name: &str) -> PathBuf {
    config
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("tokens")
        .join(name)
}

/// What the flags and environment say, before contexts are consulted.
#[derive(Debug, Default)]
pub struct Asked {
    /// `--url` / `BERTH_URL`.
    pub url: Option<String>,
    /// `--token` / `BERTH_TOKEN`.
    pub token: Option<String>,
    /// `--context` / `BERTH_CONTEXT`.
    pub context: Option<String>,
}

/// The variable naming a CA certificate to trust for the hub's TLS.
pub const CA_FILE_VARIABLE: &str = "BERTH_CA_FILE";

/// The hub URL, token and CA to use: the flags and environment first, then the named or
/// current context (its token and CA only when the URL is its own), then
/// `berth-data/admin-token`.
pub fn resolve(asked: Asked) -> Result<Resolved, String> {
    let from_environment = std::env::var_os(CA_FILE_VARIABLE).map(PathBuf::from);
    let (url, token, context_ca) = resolve_token(asked)?;
    Ok(Resolved {
        url,
        token,
        ca_file: from_environment.or(context_ca),
    })
}

fn resolve_token(asked: Asked) -> Result<(String, String, Option<PathBuf>), String> {
    let path = config_path();
    let contexts = match &path {
        Ok(path) => Contexts::load(path)?,
        Err(_) if asked.context.is_none() => Contexts::default(),
        Err(err) => return Err(err.clone()),
    };
    let chosen = contexts.chosen(asked.context.as_deref())?;
    let url = asked
        .url
        .clone()
        .or_else(|| chosen.map(|(_, context)| context.url.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let same_hub =
        |context: &Context| context.url.trim_end_matches('/') == url.trim_end_matches('/');
    let context_ca = chosen
        .filter(|(_, context)| same_hub(context))
        .and_then(|(_, context)| context.ca_file.clone());
    if let Some(token) = asked.token.filter(|token| !token.trim().is_empty()) {
        return Ok((url, token.trim().to_owned(), context_ca));
    }
    if let Some((name, context)) = chosen.filter(|(_, context)| same_hub(context)) {
        let token = std::fs::read_to_string(&context.token_file).map_err(|err| {
            format!(
                "context {name:?} keeps its token in {}, which cannot be read ({err}); `berth login {} --name {name}` saves a new one",
                context.token_file.display(),
                context.url
            )
        })?;
        return Ok((url, token.trim().to_owned(), context_ca));
    }
    match std::fs::read_to_string(DEFAULT_TOKEN_FILE) {
        Ok(token) if !token.trim().is_empty() => Ok((url, token.trim().to_owned(), None)),
        _ => Err(format!(
            "no token for {url}: run `berth login {url}` (or `berth up`, which saves a context), or set BERTH_TOKEN"
        )),
    }
}

/// `berth context …`
#[derive(Debug, clap::Subcommand)]
pub enum ContextCommand {
    /// The saved contexts; `*` marks the current one.
    List {
        /// table or json.
        #[arg(long, short = 'o', value_enum, default_value_t = super::commands::Output::Table)]
        output: super::commands::Output,
    },
    /// Make a saved context the current one.
    Use {
        /// Its name.
        name: String,
    },
    /// Forget a saved context (and the token `berth login` saved for it).
    Remove {
        /// Its name.
        name: String,
    },
}

/// Options of `berth login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The hub's address, e.g. https://hub.example.com or http://10.0.0.5:7700.
    url: String,
    /// The context's name (default: the URL's host).
    #[arg(long)]
    name: Option<String>,
    /// The token (default: read from standard input).
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// The name a context for `url` gets when none is given: its host.
fn name_for(url: &str) -> String {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    if host.is_empty() {
        "hub".to_owned()
    } else {
        host.to_owned()
    }
}

/// Runs `berth login`: checks the token against the hub, saves it (0600) beside the
/// configuration and makes the context current.
pub async fn login(args: LoginArgs) -> Result<(), String> {
    let url = args.url.trim_end_matches('/').to_owned();
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(format!(
            "{url:?} is not a hub address; give it with its scheme, e.g. http://{url}"
        ));
    }
    let name = args.name.unwrap_or_else(|| name_for(&url));
    berth_core::spec::validate_name("--name", &name).map_err(|err| err.to_string())?;
    let token = match args.token.filter(|token| !token.trim().is_empty()) {
        Some(token) => token,
        None => {
            use std::io::IsTerminal;
            if std::io::stdin().is_terminal() {
                eprint!("token for {url}: ");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|err| format!("cannot read the token: {err}"))?;
            line
        }
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err("no token given: pass --token, set BERTH_TOKEN or type it".to_owned());
    }
    let ca_file = std::env::var_os(CA_FILE_VARIABLE).map(PathBuf::from);
    let me = super::api::HubClient::trusting(&url, token.clone(), ca_file.as_deref())?
        .call(reqwest::Method::GET, "/api/users/me", None)
        .await?;
    let config = config_path()?;
    let token_file = token_path(&config, &name);
    write_private(&token_file, token.as_bytes())?;
    remember(
        &name,
        Context {
            url: url.clone(),
            token_file,
            ca_file,
        },
    )?;
    println!(
        "logged in to {url} as {} ({}); context {name:?} saved in {} and made current",
        me["name"].as_str().unwrap_or("?"),
        me["role"].as_str().unwrap_or("user"),
        config.display()
    );
    Ok(())
}

/// Runs `berth context …`.
pub fn manage(command: ContextCommand) -> Result<(), String> {
    let path = config_path()?;
    let mut contexts = Contexts::load(&path)?;
    match command {
        ContextCommand::List { output } => {
            if output == super::commands::Output::Json {
                let value = serde_json::to_value(&contexts).map_err(|err| err.to_string())?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
                return Ok(());
            }
            let rows: Vec<serde_json::Value> = contexts
                .contexts
                .iter()
                .map(|(name, context)| {
                    serde_json::json!({
                        "current": if contexts.current.as_deref() == Some(name) { "*" } else { "" },
                        "name": name,
                        "url": context.url,
                        "token_file": context.token_file.display().to_string(),
                    })
                })
                .collect();
            if rows.is_empty() {
                println!(
                    "no contexts in {}; `berth up` or `berth login URL` saves one",
                    path.display()
                );
                return Ok(());
            }
            println!(
                "{}",
                super::table::render(
                    &rows,
                    &[
                        ("CURRENT", "current"),
                        ("NAME", "name"),
                        ("URL", "url"),
                        ("TOKEN FILE", "token_file")
                    ],
                    false
                )
            );
        }
        ContextCommand::Use { name } => {
            contexts.chosen(Some(&name))?;
            contexts.current = Some(name.clone());
            contexts.save(&path)?;
            println!("context {name:?} is current");
        }
        ContextCommand::Remove { name } => {
            let removed = contexts
                .contexts
                .remove(&name)
                .ok_or_else(|| format!("no context named {name:?}; known: {}", contexts.names()))?;
            if contexts.current.as_deref() == Some(&name) {
                contexts.current = None;
            }
            if removed.token_file == token_path(&path, &name) {
                let _ = std::fs::remove_file(&removed.token_file);
            }
            contexts.save(&path)?;
            println!("context {name:?} removed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_survive_a_round_trip_and_name_the_unknown() {
        let dir = std::env::temp_dir().join(format!("berth-contexts-{}", std::process::id()));
        let path = dir.join("berth").join("config.toml");
        let mut contexts = Contexts::default();
        contexts.contexts.insert(
            "lab".to_owned(),
            Context {
                url: "http://10.0.0.5:7700".to_owned(),
                token_file: dir.join("tokens/lab"),
                ca_file: None,
            },
        );
        contexts.current = Some("lab".to_owned());
        contexts.save(&path).expect("saved");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let read = Contexts::load(&path).expect("read");
        assert_eq!(read.current.as_deref(), Some("lab"));
        let (name, context) = read.chosen(None).expect("chosen").expect("current");
        assert_eq!(
            (name, context.url.as_str()),
            ("lab", "http://10.0.0.5:7700")
        );
        let unknown = read.chosen(Some("prod")).expect_err("unknown");
        assert!(
            unknown.contains("\"prod\"") && unknown.contains("lab"),
            "{unknown}"
        );
        assert!(
            Contexts::load(&dir.join("absent.toml"))
                .expect("empty")
                .contexts
                .is_empty()
        );
        std::fs::write(&path, "current = [").expect("broken");
        assert!(
            Contexts::load(&path)
                .expect_err("broken")
                .contains("fix or remove")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
