//! `harvester delete plugin|node NAME` or `delete -f FILE`.

use super::read_manifests;
use crate::client::{Client, Kind};
use anyhow::bail;
use std::path::Path;

pub async fn delete(
    client: &Client,
    kind: Option<&str>,
    name: Option<&str>,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    if let Some(file) = file {
        for (_, text) in read_manifests(file)? {
            let objects = harvester_api::resources::parse_documents(&text)
                .map_err(|errs| super::invalid_manifest(&errs, "nothing was deleted"))?;
            for o in objects {
                targets.push((Kind::parse(o.kind())?, o.name().to_string()));
            }
        }
    } else {
        let Some(kind) = kind else {
            bail!("give TYPE NAME (delete plugin dht22), TYPE/NAME or -f FILE");
        };
        let (kind, name) = Kind::target(kind, name)?;
        let Some(name) = name else {
            bail!("give TYPE NAME (delete plugin dht22), TYPE/NAME or -f FILE");
        };
        targets.push((kind, name));
    }
    for (kind, name) in targets {
        client.delete(kind, &name).await?;
        println!("{}/{name} deleted", kind.singular());
    }
    Ok(())
}
