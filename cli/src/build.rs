//! `harvester plugin build DIR`: turns a plugin folder into a component.
//!
//! A folder with `Cargo.toml` is a Rust plugin (built for wasm32-wasip2 with
//! cargo); a folder with `app.py` is a Python plugin (built with
//! componentize-py). Either way the folder's `wit/` declares the plugin's own
//! world, which decides exactly what it imports, and the component lands in
//! `DIR/NAME.wasm`.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Python,
    Rust,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Python => "python",
            Kind::Rust => "rust",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Built {
    pub kind: Kind,
    pub world: String,
    pub output: PathBuf,
    pub size: u64,
    pub took: Duration,
}

pub fn detect(dir: &Path) -> anyhow::Result<Kind> {
    if dir.join("Cargo.toml").is_file() {
        Ok(Kind::Rust)
    } else if dir.join("app.py").is_file() {
        Ok(Kind::Python)
    } else if !dir.is_dir() {
        bail!("{}: no such plugin folder", dir.display())
    } else {
        bail!(
            "{}: not a plugin folder: expected Cargo.toml (a Rust plugin) or app.py (a Python plugin)",
            dir.display()
        )
    }
}

/// The world the plugin's `wit/` folder declares.
pub fn world(dir: &Path) -> anyhow::Result<String> {
    let wit = dir.join("wit");
    let mut worlds = Vec::new();
    let entries = std::fs::read_dir(&wit)
        .with_context(|| format!("{}: a plugin declares its world in wit/*.wit", wit.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wit") {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            for line in text.lines() {
                if let Some(rest) = line.trim_start().strip_prefix("world ") {
                    let name = rest.trim_end_matches(|c: char| c == '{' || c.is_whitespace());
                    worlds.push(name.to_string());
                }
            }
        }
    }
    match worlds.len() {
        1 => Ok(worlds.remove(0)),
        0 => bail!("{}: no `world` declared in wit/*.wit", dir.display()),
        _ => bail!(
            "{}: several worlds declared ({}); keep one per plugin",
            dir.display(),
            worlds.join(", ")
        ),
    }
}

/// The plugin's name: its folder's name.
pub fn plugin_name(dir: &Path) -> anyhow::Result<String> {
    let abs = std::fs::canonicalize(dir).with_context(|| format!("{}: no such plugin folder", dir.display()))?;
    abs.file_name()
        .and_then(|n| n.to_str())
        .map(|s| s.to_string())
        .context("the plugin folder has no name")
}

/// componentize-py from `HARVESTER_COMPONENTIZE_PY`, else from PATH.
pub fn componentize_py() -> PathBuf {
    std::env::var_os("HARVESTER_COMPONENTIZE_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("componentize-py"))
}

fn run(cmd: &mut Command, what: &str, hint: &str) -> anyhow::Result<()> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("{what} was not found: {hint}")
        } else {
            anyhow::anyhow!("cannot run {what}: {e}")
        }
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            stdout.trim_end(),
            stderr.trim_end()
        );
    }
    Ok(())
}

/// Builds the plugin in `dir` into `output` (default `DIR/NAME.wasm`).
pub fn build(dir: &Path, output: Option<&Path>) -> anyhow::Result<Built> {
    build_with(dir, output, &componentize_py())
}

/// [`build`] with an explicit componentize-py.
pub fn build_with(dir: &Path, output: Option<&Path>, componentize_py: &Path) -> anyhow::Result<Built> {
    build_in(dir, output, componentize_py, None)
}

/// Builds with Rust plugins' cargo output in `cargo_target` (default: the
/// plugin's own `target/`), so plugins built together compile their shared
/// dependencies (wit-bindgen) once.
fn build_in(
    dir: &Path,
    output: Option<&Path>,
    componentize_py: &Path,
    cargo_target: Option<&Path>,
) -> anyhow::Result<Built> {
    let started = Instant::now();
    let kind = detect(dir)?;
    let world = world(dir)?;
    let name = plugin_name(dir)?;
    let output = output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(format!("{name}.wasm")));
    // Write next to the target and rename, so a watching nodelet never loads
    // a half-written component.
    let tmp = output.with_extension("wasm.partial");
    match kind {
        Kind::Python => {
            let mut cmd = Command::new(componentize_py);
            cmd.arg("-d")
                .arg(dir.join("wit"))
                .arg("-w")
                .arg(&world)
                .arg("componentize")
                .arg("-p")
                .arg(dir)
                .arg("app")
                .arg("-o")
                .arg(&tmp);
            run(
                &mut cmd,
                "componentize-py",
                "install it with `pip install componentize-py==0.25.1` (or set HARVESTER_COMPONENTIZE_PY)",
            )?;
        }
        Kind::Rust => {
            let manifest = dir.join("Cargo.toml");
            let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            cmd.arg("build")
                .arg("--release")
                .arg("--quiet")
                .arg("--target")
                .arg("wasm32-wasip2")
                .arg("--manifest-path")
                .arg(&manifest);
            let target_dir = cargo_target.map_or_else(|| dir.join("target"), Path::to_path_buf);
            cmd.arg("--target-dir").arg(&target_dir);
            // A plugin is its own workspace; keep its build out of any
            // enclosing one's target directory and flags.
            cmd.env_remove("CARGO_TARGET_DIR")
                .env_remove("RUSTFLAGS")
                .env_remove("RUSTC_WORKSPACE_WRAPPER")
                .env_remove("CLIPPY_ARGS");
            run(
                &mut cmd,
                "cargo",
                "install Rust with rustup, then `rustup target add wasm32-wasip2`",
            )?;
            let crate_name = crate_name(&manifest)?;
            let built = target_dir
                .join("wasm32-wasip2/release")
                .join(format!("{}.wasm", crate_name.replace('-', "_")));
            std::fs::copy(&built, &tmp).with_context(|| format!("copying {}", built.display()))?;
        }
    }
    std::fs::rename(&tmp, &output).with_context(|| format!("writing {}", output.display()))?;
    let size = std::fs::metadata(&output)?.len();
    Ok(Built {
        kind,
        world,
        output,
        size,
        took: started.elapsed(),
    })
}

fn crate_name(manifest: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(v) = line.strip_prefix("name") {
            let v = v.trim_start().trim_start_matches('=').trim().trim_matches('"');
            return Ok(v.to_string());
        }
    }
    bail!("{}: no [package] name", manifest.display())
}

fn hash_sources(dir: &Path, h: &mut sha2::Sha256) -> anyhow::Result<()> {
    use sha2::Digest as _;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        // Build output, caches and editors' swap and backup files.
        if name == "target"
            || name == "__pycache__"
            || name.starts_with('.')
            || name.ends_with('~')
            || name.ends_with(".wasm")
            || name.ends_with(".partial")
        {
            continue;
        }
        if p.is_dir() {
            hash_sources(&p, h)?;
        } else {
            h.update(name.as_bytes());
            h.update(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?);
        }
    }
    Ok(())
}

/// A short hash of a plugin folder's sources and WIT (symlinked deps
/// included), without build output.
pub fn source_fingerprint(dir: &Path) -> anyhow::Result<String> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    hash_sources(dir, &mut h)?;
    Ok(hex::encode(&h.finalize()[..8]))
}

/// Builds `dir` into `out_dir/NAME-HASH.wasm`, where HASH covers the plugin's
/// sources and WIT (symlinked deps included); an existing file is reused.
/// Rust plugins share one cargo target folder in `out_dir`.
pub fn build_cached(dir: &Path, out_dir: &Path, componentize_py: &Path) -> anyhow::Result<PathBuf> {
    let key = source_fingerprint(dir)?;
    let out = out_dir.join(format!("{}-{key}.wasm", plugin_name(dir)?));
    if !out.exists() {
        std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
        build_in(dir, Some(&out), componentize_py, Some(&out_dir.join("cargo-target")))?;
    }
    Ok(out)
}

/// `harvester plugin build --cache CACHE`: the component from the cache when
/// these exact sources were built before, else built into it; then copied
/// to `output` (default `DIR/NAME.wasm`). Whether it was reused comes back.
pub fn build_from_cache(dir: &Path, output: Option<&Path>, cache: &Path) -> anyhow::Result<(PathBuf, bool)> {
    let name = plugin_name(dir)?;
    let key = source_fingerprint(dir)?;
    let reused = cache.join(format!("{name}-{key}.wasm")).exists();
    let cached = build_cached(dir, cache, &componentize_py())?;
    let output = output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(format!("{name}.wasm")));
    let tmp = output.with_extension("wasm.partial");
    std::fs::copy(&cached, &tmp).with_context(|| format!("copying {} to {}", cached.display(), tmp.display()))?;
    std::fs::rename(&tmp, &output).with_context(|| format!("writing {}", output.display()))?;
    Ok((output, reused))
}
