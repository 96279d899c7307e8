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
            // A new file of mode 0600 beside the destination, created
            // exclusively: never one another user planted there to read
            // the hub's keys from.
            let mut out = harvester_api::files::Scratch::beside(&file)
                .with_context(|| format!("writing beside {}", file.display()))?;
            let mut body = resp.bytes_stream();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.context("the hub stopped sending the backup")?;
                size += chunk.len() as u64;
                out.write_all(&chunk)
                    .with_context(|| format!("writing {}", out.scratch_path().display()))?;
            }
            out.commit().with_context(|| format!("writing {}", file.display()))?;
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
