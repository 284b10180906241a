//! The status page in a real browser: headless Chromium (Debian's
//! `chromium` and `chromium-driver`, installed by `scripts/test`) driven by
//! selenium (`cli/tests/status_page.py`) against `trackwire dev`. Flipping a
//! demo backend's `/readyz` shows on the page without a reload. Screenshots
//! are kept in `target/tmp/status-page/`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_status_page_follows_a_backend_going_down_without_reloading() {
    let child = Command::new(env!("CARGO_BIN_EXE_trackwire"))
        .args([
            "dev",
            "--proxy-bind",
            "127.0.0.1:0",
            "--grpc-bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
        ])
        .env("TRACKWIRE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start trackwire dev");
    let mut dev = Running(child);
    let stdout = dev.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut status, mut backend) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.expect("banner line");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["status-page", url] => status = url.to_string(),
            ["backend-1", url] => backend = url.to_string(),
            _ => {}
        }
        if !status.is_empty() && !backend.is_empty() {
            break;
        }
    }
    assert!(
        !status.is_empty() && !backend.is_empty(),
        "banner incomplete"
    );
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/status_page.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&status)
        .arg(format!("{backend}/toggle"))
        .arg(&shots)
        .output()
        .expect("run python3 (scripts/test installs selenium)");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "browser test failed:\n{o}\n{e}");
    assert!(o.contains("without a reload"), "{o}");
    assert!(shots.join("status-page.png").exists());
    drop(lines);
}
