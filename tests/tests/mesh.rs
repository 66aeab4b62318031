//! Two real `lpmesh run` processes of one store on loopback, enrolled with `init`, `invite` and `join`:
//! the events of the camera on one node reach the other, and `lpmesh events` lists them there.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lpmesh_tests::{free_port, interrupt, lpmesh, lpmesh_path, TempDir};

fn run(config: &std::path::Path, log: &std::path::Path) -> Child {
    Command::new(lpmesh_path())
        .args(["run", "--config", &config.to_string_lossy()])
        .env("LPMESH_LOG", "info")
        .stdout(Stdio::from(std::fs::File::create(log.with_extension("out")).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap()
}

#[test]
fn events_of_one_node_reach_the_other_node_of_the_store() {
    let dir = TempDir::new("two-nodes");
    let (n1, n2) = (dir.join("n1"), dir.join("n2"));
    let out = lpmesh()
        .args(["init", "--store", "shop-1", "--data", &n1.to_string_lossy()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    lpmesh_tests::enrol(&n1, &n2);
    // A node of another store, with its own secrets, must not get in.
    let n3 = dir.join("n3");
    assert!(lpmesh()
        .args(["init", "--store", "shop-1", "--data", &n3.to_string_lossy()])
        .output()
        .unwrap()
        .status
        .success());

    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let c1 = dir.join("n1.toml");
    std::fs::write(
        &c1,
        format!(
            r#"store = "shop-1"
node = "front"
data_dir = "{}"
[ui]
enabled = false
[mesh]
listen = ["/ip4/127.0.0.1/tcp/{p1}"]
mdns = false
[[camera]]
name = "plaza"
source = "cache:data/vtest.avi"
[[camera.line]]
name = "walkway"
from = [0.45, 0.28]
to = [0.45, 0.66]
in = "left"
"#,
            n1.display()
        ),
    )
    .unwrap();
    let c2 = dir.join("n2.toml");
    let c3 = dir.join("n3.toml");
    for (cfg, data, name, port) in [(&c2, &n2, "back", p2), (&c3, &n3, "rogue", p3)] {
        std::fs::write(
            cfg,
            format!(
                "store = \"shop-1\"\nnode = \"{name}\"\ndata_dir = \"{}\"\n[ui]\nenabled = false\n[mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\nbootstrap = [\"/ip4/127.0.0.1/tcp/{p1}\"]\nmdns = false\n",
                data.display()
            ),
        )
        .unwrap();
    }
    let mut a = run(&c1, &dir.join("n1.log"));
    std::thread::sleep(Duration::from_millis(500));
    let mut b = run(&c2, &dir.join("n2.log"));
    let mut rogue = run(&c3, &dir.join("n3.log"));
    // vtest.avi in real time: the first people cross the walkway within a few seconds.
    std::thread::sleep(Duration::from_secs(14));
    interrupt(&mut a, "node front");
    interrupt(&mut b, "node back");
    interrupt(&mut rogue, "node rogue");

    let list = |data: &std::path::Path| {
        let o = lpmesh()
            .args(["events", "--data", &data.to_string_lossy(), "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let on_front = list(&n1);
    let on_back = list(&n2);
    assert!(
        !on_front.is_empty(),
        "the camera raised events; log: {}",
        std::fs::read_to_string(dir.join("n1.log")).unwrap()
    );
    assert_eq!(on_back, on_front, "the other node holds the same events");
    // Stopped while its camera was busy, the node said how many records its log held; the database
    // reopens with every one of them.
    let said = std::fs::read_to_string(dir.join("n1.out")).unwrap();
    let durable: usize = said
        .lines()
        .find_map(|l| l.strip_prefix("mesh: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no record count in the node's output: {said}"));
    // Its records are its events and its member records (the other node's admission; and, being the
    // founder, the record naming itself).
    let members: serde_json::Value = serde_json::from_str(&lpmesh_tests::ok(&[
        "members",
        "--data",
        &n1.to_string_lossy(),
        "--json",
    ]))
    .unwrap();
    let member_records = members.as_array().map_or(0, |m| {
        m.iter()
            .filter(|m| m["admitted_by"].is_string() || (m["founder"] == true && m["name"].is_string()))
            .count()
    });
    assert_eq!(on_front.len() + member_records, durable, "records lost at shutdown");
    assert!(on_back
        .iter()
        .all(|e| e["node"] == "front" && e["camera"] == "plaza" && e["store"] == "shop-1"));
    assert!(list(&n3).is_empty(), "a node with other secrets got nothing");
    let only_crossings = lpmesh()
        .args(["events", "--data", &n2.to_string_lossy(), "--kind", "loitering"])
        .output()
        .unwrap();
    assert!(only_crossings.stdout.is_empty());
}
