//! Managing the integrations of `central.toml` the way xMatters does, from the command line:
//! `xmcentral integration copy` (a copy keeps the authentication method and gets a new URL key),
//! `export` (a communication plan's integrations as a JSON bundle with their scripts and
//! libraries inline, without secrets) and `import` (the bundle's integrations added with URL
//! authentication and new URL keys, as xMatters does for imported integrations).
//!
//! Edits keep the file's comments and layout (`toml_edit`). Every edit is validated with the
//! daemon's own [`crate::config::load`] before it replaces the file, and the file is replaced by
//! renaming a complete temporary file, so a failed edit leaves the old file as it was.
//!
//! What it deliberately does NOT do: tell a running central (restart it to serve the change),
//! print a secret more than once, or copy a secret (URL keys are always new; API keys and
//! passwords belong to `[[users]]`, which are left alone).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use server::exit::{self, ConfigError};
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

/// The `format` of an export bundle, so an import refuses files that are something else.
pub const BUNDLE_FORMAT: &str = "xmcentral-integrations/1";

/// Keys of an `[[integrations]]` entry that hold or point to a secret: never exported, never
/// copied.
const SECRET_KEYS: [&str; 2] = ["url_key", "url_key_file"];

/// Why a management command failed.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// The configuration file (as it is, or as the edit would leave it) does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The command asks for something the file or bundle does not allow (unknown or taken id).
    #[error("{file}: {reason}")]
    Usage {
        /// The file the request is about.
        file: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl ManageError {
    /// The process exit code: 78 for configuration errors, 64 for usage, 70 for I/O.
    pub fn exit_code(&self) -> i32 {
        match self {
            ManageError::Config(_) => exit::CONFIG,
            ManageError::Usage { .. } => exit::USAGE,
            ManageError::Io { .. } => exit::SOFTWARE,
        }
    }
}

/// A URL key created by a command, to be shown to the operator once.
#[derive(Debug)]
pub struct NewKey {
    /// The integration it belongs to.
    pub integration: String,
    /// The key (the `apiKey` of the trigger URL).
    pub key: String,
}

/// One integration of a bundle: its `[[integrations]]` keys without secrets and its code.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundledIntegration {
    /// The `[[integrations]]` keys except `url_key`, `url_key_file` and `script`.
    pub keys: serde_json::Map<String, serde_json::Value>,
    /// The script's source, for actions with a script.
    pub script: Option<String>,
    /// The source of each library the integration requires, by `[[libraries]]` name.
    #[serde(default)]
    pub libraries: BTreeMap<String, String>,
}

/// What `export` writes and `import` reads.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// The communication plan exported.
    pub plan: String,
    /// Its integrations.
    pub integrations: Vec<BundledIntegration>,
}

/// The configuration file, loaded and parsed for editing.
struct ConfigFile {
    path: PathBuf,
    display: String,
    document: DocumentMut,
}

impl ConfigFile {
    /// Read `path`, refusing a file the daemon would refuse (so edits start from a valid file).
    fn open(path: &Path) -> Result<Self, ManageError> {
        crate::config::load(path)?;
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ManageError::Io {
            file: display.clone(),
            source,
        })?;
        let document = text
            .parse::<DocumentMut>()
            .map_err(|error| ConfigError::new(&display, "", format!("not valid TOML: {error}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            display,
            document,
        })
    }

    fn usage(&self, reason: String) -> ManageError {
        ManageError::Usage {
            file: self.display.clone(),
            reason,
        }
    }

    fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The `[[integrations]]` entry with `id`.
    fn integration(&self, id: &str) -> Option<&Table> {
        self.document
            .get("integrations")
            .and_then(Item::as_array_of_tables)?
            .iter()
            .find(|table| table.get("id").and_then(Item::as_str) == Some(id))
    }

    /// Refuse `id` when it is not a valid integration id or is already taken.
    fn check_new_id(&self, id: &str) -> Result<(), ManageError> {
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.usage(format!(
                "{id:?} is not a valid integration id (letters, digits, '-' and '_')"
            )));
        }
        if self.integration(id).is_some() {
            return Err(self.usage(format!("an integration with id {id:?} already exists")));
        }
        Ok(())
    }

    /// Append `table` to the array of tables `name`, after its last entry.
    fn append(&mut self, name: &str, table: Table) {
        let item = self
            .document
            .entry(name)
            .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()));
        if let Some(array) = item.as_array_of_tables_mut() {
            array.push(table);
        }
    }

    /// Validate the edited document with the daemon's loader and replace the file atomically
    /// (same permissions). On failure the file is untouched.
    fn save(self) -> Result<(), ManageError> {
        let io = |source| ManageError::Io {
            file: self.display.clone(),
            source,
        };
        let mut temporary = tempfile::Builder::new()
            .prefix(".xmcentral-edit-")
            .suffix(".toml")
            .tempfile_in(self.base_dir())
            .map_err(io)?;
        temporary
            .write_all(self.document.to_string().as_bytes())
            .map_err(io)?;
        let permissions = std::fs::metadata(&self.path).map_err(io)?.permissions();
        std::fs::set_permissions(temporary.path(), permissions).map_err(io)?;
        temporary.as_file().sync_all().map_err(io)?;
        crate::config::load(temporary.path()).map_err(|mut error| {
            error.file = format!("{} (as edited; left unchanged)", self.display);
            error
        })?;
        temporary
            .persist(&self.path)
            .map_err(|error| io(error.error))?;
        Ok(())
    }
}

/// A random URL key (192 bits, hex).
fn random_key() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

/// Write `contents` to a file that must not exist yet, readable by its owner only.
fn create_private(path: &Path, contents: &str) -> Result<(), ManageError> {
    let io = |source| ManageError::Io {
        file: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Files written before the configuration: removed again unless the edit is saved.
#[derive(Default)]
struct WrittenFiles(Vec<PathBuf>);

impl WrittenFiles {
    fn create(&mut self, path: PathBuf, contents: &str) -> Result<(), ManageError> {
        create_private(&path, contents)?;
        self.0.push(path);
        Ok(())
    }

    /// Keep the files (the configuration that names them was saved).
    fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for WrittenFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `xmcentral integration copy SRC NEW`: add a copy of integration `source` under id `new`,
/// with the same authentication method. When the source has a URL key, the copy gets a new
/// random one (inline as `url_key`, or in a new 0600 file next to the source's
/// `url_key_file`), returned to be printed once.
pub fn copy(config: &Path, source: &str, new: &str) -> Result<Option<NewKey>, ManageError> {
    let mut file = ConfigFile::open(config)?;
    let original = file
        .integration(source)
        .ok_or_else(|| file.usage(format!("no integration with id {source:?}")))?;
    file.check_new_id(new)?;
    let mut copy = Table::new();
    for (key, item) in original.iter() {
        if !SECRET_KEYS.contains(&key) {
            copy.insert(key, item.clone());
        }
    }
    copy.insert("id", toml_edit::value(new));
    if let Some(name) = original.get("name").and_then(Item::as_str) {
        copy.insert("name", toml_edit::value(format!("{name} (copy)")));
    }
    let mut written = WrittenFiles::default();
    let new_key = if let Some(old_file) = original.get("url_key_file").and_then(Item::as_str) {
        let key = random_key();
        let relative = Path::new(old_file).with_file_name(format!("{new}.url_key"));
        written.create(file.base_dir().join(&relative), &format!("{key}\n"))?;
        copy.insert(
            "url_key_file",
            toml_edit::value(relative.display().to_string()),
        );
        Some(key)
    } else if original.contains_key("url_key") {
        let key = random_key();
        copy.insert("url_key", toml_edit::value(&key));
        Some(key)
    } else {
        None
    };
    copy.decor_mut()
        .set_prefix(format!("\n# copy of {source:?}\n"));
    file.append("integrations", copy);
    file.save()?;
    written.keep();
    Ok(new_key.map(|key| NewKey {
        integration: new.to_owned(),
        key,
    }))
}

/// The integrations and libraries of `central.toml` as plain values (for export).
#[derive(Deserialize)]
struct Definitions {
    #[serde(default)]
    integrations: Vec<toml::Table>,
    #[serde(default)]
    libraries: Vec<LibraryEntry>,
}

#[derive(Deserialize)]
struct LibraryEntry {
    name: String,
    path: PathBuf,
}

/// `xmcentral integration export --plan PLAN`: the bundle of the plan's integrations, with
/// script and library sources inline and no secret.
pub fn export(config: &Path, plan: &str) -> Result<Bundle, ManageError> {
    let file = ConfigFile::open(config)?;
    let definitions: Definitions = toml::from_str(&file.document.to_string())
        .map_err(|error| ConfigError::new(&file.display, "", error.to_string()))?;
    let read = |path: &Path| {
        let full = file.base_dir().join(path);
        std::fs::read_to_string(&full).map_err(|source| ManageError::Io {
            file: full.display().to_string(),
            source,
        })
    };
    let mut integrations = Vec::new();
    for mut table in definitions.integrations {
        if table.get("plan").and_then(toml::Value::as_str) != Some(plan) {
            continue;
        }
        for secret in SECRET_KEYS {
            table.remove(secret);
        }
        let script = match table.remove("script") {
            Some(toml::Value::String(path)) => Some(read(Path::new(&path))?),
            _ => None,
        };
        let mut libraries = BTreeMap::new();
        for name in table
            .get("libraries")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(toml::Value::as_str)
        {
            if let Some(library) = definitions.libraries.iter().find(|l| l.name == name) {
                libraries.insert(name.to_owned(), read(&library.path)?);
            }
        }
        let keys = match serde_json::to_value(&table) {
            Ok(serde_json::Value::Object(keys)) => keys,
            _ => serde_json::Map::new(),
        };
        integrations.push(BundledIntegration {
            keys,
            script,
            libraries,
        });
    }
    if integrations.is_empty() {
        return Err(file.usage(format!("no integration has plan = {plan:?}")));
    }
    Ok(Bundle {
        format: BUNDLE_FORMAT.to_owned(),
        plan: plan.to_owned(),
        integrations,
    })
}

/// How `import` names and authenticates what it adds.
#[derive(Debug, Default)]
pub struct ImportOptions {
    /// Prefix every imported id with this (to import next to the originals).
    pub rename_prefix: Option<String>,
    /// The authenticating user of the imported integrations' URL keys (default: the one in
    /// the bundle).
    pub authenticating_user: Option<String>,
}

/// `xmcentral integration import BUNDLE`: add the bundle's integrations with URL
/// authentication and a new URL key each (returned to be printed once). Scripts and libraries
/// are written next to the configuration (`{id}.js`, `{library}.library.js`; an existing
/// library file must hold the same source). Refuses ids that exist (after the prefix).
pub fn import(
    config: &Path,
    bundle_path: &Path,
    options: &ImportOptions,
) -> Result<Vec<NewKey>, ManageError> {
    let bundle_display = bundle_path.display().to_string();
    let bundle_usage = |reason: String| ManageError::Usage {
        file: bundle_display.clone(),
        reason,
    };
    let text = std::fs::read_to_string(bundle_path).map_err(|source| ManageError::Io {
        file: bundle_display.clone(),
        source,
    })?;
    let bundle: Bundle = serde_json::from_str(&text)
        .map_err(|error| bundle_usage(format!("not an integration bundle: {error}")))?;
    if bundle.format != BUNDLE_FORMAT {
        return Err(bundle_usage(format!(
            "format {:?} is not {BUNDLE_FORMAT:?}",
            bundle.format
        )));
    }
    let mut file = ConfigFile::open(config)?;
    let mut written = WrittenFiles::default();
    let mut keys = Vec::new();
    let mut library_names: Vec<String> = Vec::new();
    for (index, bundled) in bundle.integrations.iter().enumerate() {
        let original_id = bundled
            .keys
            .get("id")
            .and_then(|id| id.as_str())
            .ok_or_else(|| bundle_usage(format!("integrations[{index}] has no id")))?;
        let id = format!(
            "{}{original_id}",
            options.rename_prefix.as_deref().unwrap_or("")
        );
        file.check_new_id(&id).map_err(|error| match error {
            ManageError::Usage { file, reason } => ManageError::Usage {
                file,
                reason: format!("{reason} (import with --rename-prefix to add it beside)"),
            },
            other => other,
        })?;
        let mut table = Table::new();
        for (key, value) in &bundled.keys {
            if SECRET_KEYS.contains(&key.as_str()) || key == "script" {
                return Err(bundle_usage(format!(
                    "integrations[{index}].keys.{key} is not allowed in a bundle"
                )));
            }
            let value = toml_value(value).ok_or_else(|| {
                bundle_usage(format!(
                    "integrations[{index}].keys.{key} has no TOML equivalent"
                ))
            })?;
            table.insert(key, Item::Value(value));
        }
        table.insert("id", toml_edit::value(&id));
        table.insert("auth", toml_edit::value("url"));
        if let Some(user) = &options.authenticating_user {
            table.insert("authenticating_user", toml_edit::value(user));
        }
        if !table.contains_key("authenticating_user") {
            return Err(bundle_usage(format!(
                "integrations[{index}] has no authenticating_user: give --authenticating-user"
            )));
        }
        let key = random_key();
        table.insert("url_key", toml_edit::value(&key));
        if let Some(script) = &bundled.script {
            let name = format!("{id}.js");
            written.create(file.base_dir().join(&name), script)?;
            table.insert("script", toml_edit::value(name));
        }
        for (name, source) in &bundled.libraries {
            if library_names.contains(name) {
                continue;
            }
            library_names.push(name.clone());
            import_library(&mut file, &mut written, name, source)?;
        }
        table
            .decor_mut()
            .set_prefix(format!("\n# imported from plan {:?}\n", bundle.plan));
        file.append("integrations", table);
        keys.push(NewKey {
            integration: id,
            key,
        });
    }
    file.save()?;
    written.keep();
    Ok(keys)
}

/// Make library `name` with `source` available: an existing `[[libraries]]` entry must hold the
/// same source; otherwise the source is written to `{name}.library.js` and an entry added.
fn import_library(
    file: &mut ConfigFile,
    written: &mut WrittenFiles,
    name: &str,
    source: &str,
) -> Result<(), ManageError> {
    let existing = file
        .document
        .get("libraries")
        .and_then(Item::as_array_of_tables)
        .and_then(|libraries| {
            libraries
                .iter()
                .find(|table| table.get("name").and_then(Item::as_str) == Some(name))
        })
        .and_then(|table| table.get("path").and_then(Item::as_str))
        .map(|path| file.base_dir().join(path));
    if let Some(path) = existing {
        let current = std::fs::read_to_string(&path).map_err(|source| ManageError::Io {
            file: path.display().to_string(),
            source,
        })?;
        return if current == source {
            Ok(())
        } else {
            Err(file.usage(format!(
                "library {name:?} exists with a different source ({}); rename one of them",
                path.display()
            )))
        };
    }
    let relative = format!("{name}.library.js");
    written.create(file.base_dir().join(&relative), source)?;
    let mut table = Table::new();
    table.insert("name", toml_edit::value(name));
    table.insert("path", toml_edit::value(relative));
    file.append("libraries", table);
    Ok(())
}

/// The TOML value of a JSON value (objects become inline tables); `None` for `null`.
fn toml_value(value: &serde_json::Value) -> Option<toml_edit::Value> {
    use serde_json::Value as Json;
    Some(match value {
        Json::Null => return None,
        Json::Bool(b) => (*b).into(),
        Json::Number(n) => match n.as_i64() {
            Some(i) => i.into(),
            None => n.as_f64()?.into(),
        },
        Json::String(s) => s.as_str().into(),
        Json::Array(items) => {
            let mut array = toml_edit::Array::new();
            for item in items {
                array.push(toml_value(item)?);
            }
            array.into()
        }
        Json::Object(map) => {
            let mut table = toml_edit::InlineTable::new();
            for (key, item) in map {
                table.insert(key, toml_value(item)?);
            }
            table.into()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "# operators' notes\n[central]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n[[users]]\nname = \"svc\"\npassword = \"pw\"\n\n# the alerts\n[[integrations]]\nid = \"alerts\"\nname = \"Alerts\"\naction = \"create_event\"\nplan = \"Ops\"\nauth = \"url\"\nurl_key_file = \"keys/alerts.key\"\nauthenticating_user = \"svc\"\n\n[[integrations]]\nid = \"basic\"\naction = \"create_event\"\nauth = \"basic\" # users only\n";

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("keys")).expect("mkdir");
        std::fs::write(dir.path().join("keys/alerts.key"), "old-key\n").expect("key");
        let path = dir.path().join("central.toml");
        std::fs::write(&path, CONFIG).expect("config");
        (dir, path)
    }

    #[test]
    fn copy_of_a_key_file_integration_writes_a_new_private_key_file_and_keeps_comments() {
        use std::os::unix::fs::PermissionsExt as _;
        let (dir, path) = setup();
        let key = copy(&path, "alerts", "alerts-2")
            .expect("copied")
            .expect("a new key");
        assert_eq!(key.integration, "alerts-2");
        let key_file = dir.path().join("keys/alerts-2.url_key");
        assert_eq!(
            std::fs::read_to_string(&key_file).expect("new key file"),
            format!("{}\n", key.key)
        );
        let mode = std::fs::metadata(&key_file)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keys/alerts.key")).expect("old"),
            "old-key\n"
        );
        let text = std::fs::read_to_string(&path).expect("config");
        assert!(
            text.starts_with(CONFIG),
            "the original text is kept:\n{text}"
        );
        assert!(
            text.contains("url_key_file = \"keys/alerts-2.url_key\""),
            "{text}"
        );
        assert!(text.contains("name = \"Alerts (copy)\""), "{text}");
        let loaded = crate::config::load(&path).expect("loads");
        let hosted = loaded.hosted.expect("hosted");
        assert_eq!(
            hosted.integrations["alerts-2"].auth.mode,
            hosted.integrations["alerts"].auth.mode
        );
    }

    #[test]
    fn copy_without_a_url_key_creates_no_secret() {
        let (_dir, path) = setup();
        assert!(copy(&path, "basic", "basic-2").expect("copied").is_none());
        let text = std::fs::read_to_string(&path).expect("config");
        assert!(!text.contains("basic-2\"\nurl_key"), "{text}");
        assert!(text.contains("id = \"basic-2\""), "{text}");
    }

    #[test]
    fn copy_refuses_unknown_sources_taken_or_bad_ids_and_leaves_the_file() {
        let (dir, path) = setup();
        for (source, new, expected) in [
            ("nope", "x", "no integration with id \"nope\""),
            ("alerts", "basic", "already exists"),
            ("alerts", "bad id", "not a valid integration id"),
        ] {
            let error = copy(&path, source, new).expect_err(new);
            assert_eq!(error.exit_code(), exit::USAGE, "{error}");
            assert!(error.to_string().contains(expected), "{error}");
            assert!(error.to_string().contains("central.toml"), "{error}");
        }
        assert_eq!(std::fs::read_to_string(&path).expect("config"), CONFIG);
        assert!(!dir.path().join("keys/x.url_key").exists());
    }

    #[test]
    fn an_edit_the_daemon_would_refuse_is_not_written() {
        let (dir, path) = setup();
        // The copy's key file is taken: nothing may change.
        std::fs::write(dir.path().join("keys/taken.url_key"), "x").expect("write");
        let error = copy(&path, "alerts", "taken").expect_err("file exists");
        assert!(matches!(error, ManageError::Io { .. }), "{error}");
        // An invalid starting file is a config error (78).
        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, "[central]\nlisten = 5\n").expect("write");
        let error = copy(&broken, "alerts", "x").expect_err("invalid");
        assert_eq!(error.exit_code(), exit::CONFIG, "{error}");
        assert_eq!(std::fs::read_to_string(&path).expect("config"), CONFIG);
    }

    #[test]
    fn json_values_become_toml_values_and_null_is_refused() {
        let value = serde_json::json!({"a": [1, 2.5, true, "x"]});
        let toml = toml_value(&value).expect("representable");
        assert_eq!(toml.to_string(), "{ a = [1, 2.5, true, \"x\"] }");
        assert!(toml_value(&serde_json::json!({"a": null})).is_none());
    }

    #[test]
    fn export_and_import_refuse_what_they_cannot_do() {
        let (dir, path) = setup();
        let error = export(&path, "Nope").expect_err("no such plan");
        assert_eq!(error.exit_code(), exit::USAGE);
        let bundle = export(&path, "Ops").expect("exported");
        assert_eq!(bundle.integrations.len(), 1);
        assert!(!bundle.integrations[0].keys.contains_key("url_key_file"));
        let bundle_path = dir.path().join("bundle.json");
        std::fs::write(&bundle_path, serde_json::to_string(&bundle).expect("json")).expect("w");
        let error = import(&path, &bundle_path, &ImportOptions::default()).expect_err("taken");
        assert!(error.to_string().contains("--rename-prefix"), "{error}");
        std::fs::write(
            &bundle_path,
            "{\"format\": \"other\", \"plan\": \"p\", \"integrations\": []}",
        )
        .expect("w");
        let error = import(&path, &bundle_path, &ImportOptions::default()).expect_err("format");
        assert_eq!(error.exit_code(), exit::USAGE);
        assert!(error.to_string().contains("bundle.json"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).expect("config"), CONFIG);
    }
}
