//! Backups of a hub: the store (every object, revision, event, uploaded
//! component, identity, token and audit entry) read while no write can
//! happen, and the files that make the hub itself (its CA, its compile
//! key, the admin's client configuration), in one tar archive. Compiled
//! code is left out: the hub compiles it again on demand.
//!
//! Restoring writes a new data folder (never over an existing one) that a
//! controller started on it serves as the hub that was backed up.

use crate::store::Store;
use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

/// The archive's first entry, naming what it is.
const HEADER: &str = "harvester-backup.json";
const FORMAT: u32 = 1;
/// Folders of the data folder a backup leaves out: the store (in the
/// archive as its trees) and caches rebuilt on demand.
const NOT_FILES: [&str; 2] = ["store", "compiled"];
/// The largest key or value a restore accepts (an uploaded component is
/// at most 64 MiB).
const MAX_RECORD: u32 = 256 << 20;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    format: u32,
    /// The store's revision the backup stands at.
    resource_version: u64,
    created_ms: u64,
    version: String,
}

/// What a backup or a restore held.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub resource_version: u64,
    pub records: u64,
    pub files: Vec<String>,
}

fn add(tar: &mut tar::Builder<impl Write>, path: &str, mode: u32, bytes: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(mode);
    h.set_mtime(harvester_api::now_ms() / 1000);
    h.set_cksum();
    tar.append_data(&mut h, path, bytes)
}

/// The data folder's files to keep, relative to it.
fn files_of(data: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type()?;
            if name.starts_with('.') || (dir == root && NOT_FILES.contains(&name.as_str())) {
                continue;
            }
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else if kind.is_file() {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(data, data, &mut out)?;
    out.sort();
    Ok(out)
}

/// Writes a backup of the hub whose store is `store` and whose data folder
/// is `data` to `out` (a file the caller removes on error).
pub async fn write(store: &Store, data: &Path, out: std::fs::File) -> anyhow::Result<Summary> {
    let mut tar = tar::Builder::new(std::io::BufWriter::new(out));
    let mut summary = Summary::default();
    // The trees go to one entry of framed records, written to a scratch
    // file first: a tar entry needs its size up front.
    let scratch = tempfile::tempfile_in(data).context("a scratch file in the data folder")?;
    let mut records = std::io::BufWriter::new(scratch);
    let mut count = 0u64;
    let resource_version = store
        .snapshot(|tree, k, v| {
            count += 1;
            for part in [tree, k, v] {
                records.write_all(&(part.len() as u32).to_be_bytes())?;
                records.write_all(part)?;
            }
            Ok(())
        })
        .await?;
    let mut records = records.into_inner().map_err(|e| e.into_error())?;
    let header = Header {
        format: FORMAT,
        resource_version,
        created_ms: harvester_api::now_ms(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    add(&mut tar, HEADER, 0o600, &serde_json::to_vec_pretty(&header)?)?;
    let size = records.metadata()?.len();
    std::io::Seek::rewind(&mut records)?;
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(header.created_ms / 1000);
    h.set_cksum();
    tar.append_data(&mut h, "store.records", &mut records)?;
    for rel in files_of(data)? {
        let bytes = std::fs::read(data.join(&rel)).with_context(|| format!("reading {}", rel.display()))?;
        add(&mut tar, &format!("files/{}", rel.display()), 0o600, &bytes)?;
        summary.files.push(rel.display().to_string());
    }
    let out = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    out.sync_all()?;
    summary.resource_version = resource_version;
    summary.records = count;
    Ok(summary)
}

/// A path inside the archive that stays inside the folder it is unpacked
/// into: plain names only.
fn inside(rel: &Path) -> anyhow::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            _ => bail!(
                "the backup names {}, outside the data folder: refusing it",
                rel.display()
            ),
        }
    }
    if out.as_os_str().is_empty() {
        bail!("the backup has an entry without a name");
    }
    Ok(out)
}

fn read_part(r: &mut impl Read) -> anyhow::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_RECORD {
        bail!("the store's records are damaged: one claims {len} bytes");
    }
    let mut buf = Vec::new();
    r.take(u64::from(len)).read_to_end(&mut buf)?;
    if buf.len() != len as usize {
        bail!("the store's records end in the middle of one: the backup is cut short");
    }
    Ok(Some(buf))
}

/// Unpacks the backup `archive` into `data`, which must not exist or be
/// empty: the store's trees, and the hub's files (mode 0600).
pub fn restore(archive: &Path, data: &Path) -> anyhow::Result<Summary> {
    if data.exists() && std::fs::read_dir(data)?.next().is_some() {
        bail!(
            "{} is not empty: restore into a new folder, then start the controller with --data on it",
            data.display()
        );
    }
    let file = std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    let mut entries = tar.entries()?;
    let not_a_backup = || anyhow::anyhow!("{} is not a Harvester backup", archive.display());
    let header: Header = {
        let Some(Ok(mut first)) = entries.next() else {
            return Err(not_a_backup());
        };
        if first.path()?.as_ref() != Path::new(HEADER) {
            return Err(not_a_backup());
        }
        let mut text = Vec::new();
        (&mut first).take(64 << 10).read_to_end(&mut text)?;
        serde_json::from_slice(&text).map_err(|_| not_a_backup())?
    };
    if header.format != FORMAT {
        bail!(
            "{} is a backup of format {} (Harvester {}); this version reads format {FORMAT}",
            archive.display(),
            header.format,
            header.version
        );
    }
    harvester_api::files::private_folder(data).with_context(|| format!("restoring into {}", data.display()))?;
    let db = sled::Config::new().path(data.join("store")).open()?;
    let mut summary = Summary {
        resource_version: header.resource_version,
        ..Summary::default()
    };
    for entry in entries {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path == Path::new("store.records") {
            let mut r = std::io::BufReader::new(&mut entry);
            while let Some(tree) = read_part(&mut r)? {
                let (Some(k), Some(v)) = (read_part(&mut r)?, read_part(&mut r)?) else {
                    bail!("the store's records end in the middle of one: the backup is cut short");
                };
                db.open_tree(&tree)?.insert(k, v)?;
                summary.records += 1;
            }
        } else if let Ok(rel) = path.strip_prefix("files") {
            let rel = inside(rel)?;
            let to = data.join(&rel);
            if let Some(dir) = to.parent() {
                create_private_dir(dir)?;
            }
            if entry.size() > u64::from(MAX_RECORD) {
                bail!(
                    "{}: {} claims {} bytes: not a hub's file",
                    archive.display(),
                    path.display(),
                    entry.size()
                );
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            harvester_pki::write_private(&to, &bytes)?;
            summary.files.push(rel.display().to_string());
        } else {
            bail!("{}: unexpected entry {} in a backup", archive.display(), path.display());
        }
    }
    db.flush()?;
    Ok(summary)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}
