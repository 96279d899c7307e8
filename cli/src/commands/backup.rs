//! `harvester controller backup|restore`: a hub's state to a file and back.

use crate::args::ControllerAction;
use crate::client::Client;
use anyhow::Context;
use futures::StreamExt;
use std::io::Write;

pub async fn run(action: ControllerAction, client: impl Fn() -> anyhow::Result<Client>) -> anyhow::Result<()> {
    match action {
        ControllerAction::Backup { file } => {
            let resp = client()?.stream("backup").await?;
            let version = resp
                .headers()
                .get("x-harvester-resource-version")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            let partial = file.with_extension("partial");
            let mut out = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&partial)
                    .with_context(|| format!("writing {}", partial.display()))?
            };
            let mut body = resp.bytes_stream();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.context("the hub stopped sending the backup")?;
                size += chunk.len() as u64;
                out.write_all(&chunk)?;
            }
            out.sync_all()?;
            drop(out);
            std::fs::rename(&partial, &file).with_context(|| format!("writing {}", file.display()))?;
            super::say!(
                "backup of the hub at resourceVersion {version} written to {} ({} KiB, mode 0600: it holds the hub's keys)",
                file.display(),
                size.div_ceil(1024)
            );
            Ok(())
        }
        ControllerAction::Restore { file, data } => {
            let summary = harvester_controller::backup::restore(&file, &data)?;
            super::say!(
                "restored the hub at resourceVersion {} into {}: {} store records, {} files ({})",
                summary.resource_version,
                data.display(),
                summary.records,
                summary.files.len(),
                summary.files.join(", ")
            );
            super::say!("start it with: harvester controller --data {}", data.display());
            Ok(())
        }
    }
}
