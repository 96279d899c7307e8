//! `harvester describe plugin|node NAME`: one object in detail.

use super::{Table, age, labels, selector, short};
use crate::client::{Client, Kind};
use harvester_api::resources::{Condition, Node, Plugin};

pub async fn describe(client: &Client, kind: &str, name: Option<&str>) -> anyhow::Result<()> {
    let (kind, name) = Kind::target(kind, name)?;
    let Some(name) = name else {
        anyhow::bail!("describe one object: TYPE NAME or TYPE/NAME");
    };
    let name = name.as_str();
    match kind {
        Kind::Plugin => {
            let (plugin, events) = tokio::try_join!(client.plugin(name), client.events(name))?;
            print_plugin(&plugin);
            super::say!("Events:");
            if events.is_empty() {
                super::say!("  <none since the controller started>");
            }
            for e in events {
                super::say!("  {:>5} ago  {}", age(e.time), e.message);
            }
        }
        Kind::Node => print_node(&client.node(name).await?),
    }
    Ok(())
}

fn print_header(name: &str, l: &harvester_api::resources::Labels, created: u64) {
    super::say!("Name:          {name}");
    super::say!("Labels:        {}", labels(l));
    super::say!("Created:       {} ago", age(created));
}

fn print_plugin(p: &Plugin) {
    let (meta, spec, run) = (&p.metadata, &p.spec, &p.spec.run);
    print_header(&meta.name, &meta.labels, meta.creation_timestamp);
    super::say!("Generation:    {}", meta.generation);
    super::say!("Image:         {}", spec.image);
    // Two digests meet here: the artifact's (the OCI manifest, what
    // signatures sign and apply pins) and the component's (the .wasm bytes,
    // in node logs and /status).
    super::say!(
        "Artifact:      {} (the OCI manifest's digest)",
        spec.digest.map_or("-".to_string(), |d| d.to_string())
    );
    super::say!("Node selector: {}", selector(&spec.node_selector()));
    super::say!("Grants:        {}", json(&run.grants));
    super::say!("Config:        {}", labels(&run.config));
    super::say!("Tick:          {}", run.tick_interval);
    super::say!("Limits:        {}", json(&run.limits));
    super::say!("Nodes:");
    let mut table = Table::new([
        "  NODE",
        "PHASE",
        "GENERATION",
        "ARTIFACT",
        "RESTARTS",
        "REASON",
        "MESSAGE",
    ]);
    for (n, s) in p.status.iter().flat_map(|s| &s.nodes) {
        table.row(vec![
            format!("  {n}"),
            s.phase.as_str().to_string(),
            s.generation.to_string(),
            short(s.digest.as_ref()),
            s.restarts.to_string(),
            s.reason.as_ref().map_or("", |r| r.as_str()).to_string(),
            s.message.clone(),
        ]);
    }
    table.print();
    print_conditions(p.status.as_ref().map_or(&[][..], |s| &s.conditions[..]));
}

fn print_node(n: &Node) {
    let s = &n.status;
    print_header(&n.metadata.name, &n.metadata.labels, n.metadata.creation_timestamp);
    super::say!("Roles:         {}", super::get::roles(n));
    super::say!("Architecture:  {}", s.architecture);
    super::say!("Hardware:      {} ({})", s.backend, json(&s.devices));
    super::say!("Address:       {}", s.address);
    let keys = if s.trusted_keys.is_empty() {
        "no key".to_string()
    } else {
        format!("keys {}", s.trusted_keys.join(", "))
    };
    let unsigned = if s.allow_unsigned {
        "; RUNS UNSIGNED COMPONENTS (--allow-unsigned)"
    } else {
        ""
    };
    super::say!("Trusts:        {keys}{unsigned}");
    if let Some(e) = &s.engine {
        let how = match e.compile.as_str() {
            "hub" => "code compiled by the hub only",
            "auto" => "code compiled by the hub when it has a trusted key, else here",
            "local" => "compiles here",
            other => other,
        };
        super::say!("Compile:       {how} ({}, engine {})", e.target, e.hash);
    }
    if let Some(m) = &s.memory {
        super::say!(
            "Memory:        {} for plugins' limits.memory, of {}",
            m.allocatable,
            m.total
        );
    }
    super::say!("Heartbeat:     {} ago", age(s.last_heartbeat));
    super::say!("Plugins:");
    for (p, st) in &s.plugins {
        super::say!(
            "  {p}: {} generation {} {}",
            st.phase.as_str(),
            st.generation,
            st.message
        );
    }
    print_conditions(&s.conditions);
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn print_conditions(conditions: &[Condition]) {
    super::say!("Conditions:");
    for c in conditions {
        super::say!(
            "  {:<12} {:<6} {:<18} {} ago  {}",
            c.kind.as_str(),
            c.status.as_str(),
            c.reason.as_str(),
            age(c.last_transition_time),
            c.message
        );
    }
}
