//! `watchConfig`: a changed config file, including a Kubernetes-style symlink swap, is
//! reloaded like SIGHUP without anyone sending a signal.

mod common;

use common::*;
use std::time::Duration;

fn listed(mg: &Modelgate) -> Vec<String> {
    let v = get(mg.addr(), "/v1/models").json();
    v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_edited_config_file_is_reloaded() {
    let mg = Modelgate::start(&config_with(
        &[("a", "http://127.0.0.1:9")],
        serde_json::json!({"watchConfig": true}),
    ));
    assert_eq!(listed(&mg), ["a"]);
    mg.rewrite_config(&config_with(
        &[("a", "http://127.0.0.1:9"), ("b", "http://127.0.0.1:9")],
        serde_json::json!({"watchConfig": true}),
    ));
    assert!(
        wait_until(Duration::from_secs(5), || listed(&mg) == ["a", "b"]),
        "not reloaded: {:?}",
        mg.stderr_lines()
    );
}

#[test]
fn a_symlink_swap_is_followed() {
    // Kubernetes mounts ConfigMaps as config.json -> ..data/config.json with ..data a
    // symlink to a timestamped directory that is swapped atomically.
    let dir = TempDir::new();
    let v1 = dir.join("v1");
    let v2 = dir.join("v2");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::create_dir_all(&v2).unwrap();
    let extra = serde_json::json!({"watchConfig": true});
    std::fs::write(
        v1.join("config.json"),
        config_with(&[("a", "http://127.0.0.1:9")], extra.clone()),
    )
    .unwrap();
    std::fs::write(
        v2.join("config.json"),
        config_with(
            &[("a", "http://127.0.0.1:9"), ("c", "http://127.0.0.1:9")],
            extra,
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
    let link = dir.join("config.json");
    std::os::unix::fs::symlink("..data/config.json", &link).unwrap();
    let text = std::fs::read_to_string(&link).unwrap();
    let data = dir.join("..data");
    let tmp = dir.join("..data.tmp");
    // start_in writes config.json through the symlink (same text) and passes the symlink
    // path to modelgate.
    let mg = Modelgate::start_in(dir, &text, |_| {});
    assert_eq!(listed(&mg), ["a"]);
    std::os::unix::fs::symlink("v2", &tmp).unwrap();
    std::fs::rename(&tmp, &data).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || listed(&mg) == ["a", "c"]),
        "symlink swap not followed: {:?}",
        mg.stderr_lines()
    );
}
