//! Headless Chromium for the end-to-end tests: what a browser really makes of a page (its DOM
//! after parsing, and a phone-sized screenshot), and how much of that screenshot is red.
//!
//! Every run has a hard deadline: Chromium starts in its own process group and the whole group
//! (browser, renderer, GPU and crash-handler children) is killed when the deadline passes, and
//! again once the browser has exited, so no test can hang on it or leave a process behind.
//! The binary is `chromium` on the PATH, or `$FERRY_CHROMIUM`.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Longest a single Chromium run may take (it usually takes about one second).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Phone-sized viewport of the screenshots (CSS pixels; width of a common phone).
pub const WINDOW_SIZE: &str = "390,1400";

/// What Chromium showed of a page.
pub struct Page {
    /// The serialized DOM after parsing (`--dump-dom`).
    pub dom: String,
    /// A PNG screenshot at [`WINDOW_SIZE`].
    pub png: Vec<u8>,
}

/// Renders `url` twice, once for its DOM and once for a screenshot, each within [`DEADLINE`].
/// `dir` holds the browser profiles and the screenshot file.
pub fn render(url: &str, dir: &Path) -> Result<Page, String> {
    let dom = dump_dom(url, dir)?;
    let png = screenshot(url, dir)?;
    Ok(Page { dom, png })
}

/// The DOM of `url` as Chromium serializes it after loading the page.
pub fn dump_dom(url: &str, dir: &Path) -> Result<String, String> {
    let run = run_chromium(&["--dump-dom", url], dir, "dom")?;
    if run.stdout.trim().is_empty() {
        return Err(format!(
            "chromium --dump-dom {url} printed nothing: {run:?}"
        ));
    }
    Ok(run.stdout)
}

/// A PNG screenshot of `url` at [`WINDOW_SIZE`].
pub fn screenshot(url: &str, dir: &Path) -> Result<Vec<u8>, String> {
    let path = dir.join(format!("screenshot-{}.png", unique()));
    let run = run_chromium(
        &[
            &format!("--screenshot={}", path.display()),
            &format!("--window-size={WINDOW_SIZE}"),
            url,
        ],
        dir,
        "shot",
    )?;
    std::fs::read(&path).map_err(|e| format!("no screenshot at {}: {e}; {run:?}", path.display()))
}

/// Pixels of a PNG that are clearly red (like `#c62828`, the colour of a stopped service):
/// a strong red channel and weak green and blue, so orange/amber, pink tints and the grey
/// anti-aliasing of text do not count.
pub fn red_pixels(png_bytes: &[u8]) -> Result<usize, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| format!("bad PNG: {e}"))?;
    let size = reader
        .output_buffer_size()
        .ok_or("PNG too large to decode")?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("bad PNG frame: {e}"))?;
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        // Grey has no red; palettes were expanded to RGB(A) by the transformation above.
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => return Ok(0),
        other => return Err(format!("unexpected PNG colour type {other:?}")),
    };
    let width = info.width as usize;
    Ok(buf
        .chunks(info.line_size)
        .take(info.height as usize)
        .flat_map(|line| line[..width * channels].chunks(channels))
        .filter(|px| is_red(px[0], px[1], px[2]))
        .count())
}

fn is_red(r: u8, g: u8, b: u8) -> bool {
    r >= 150 && g < 90 && b < 90
}

/// Output of a finished command.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs Chromium headless with `args`, in a fresh profile under `dir`.
fn run_chromium(args: &[&str], dir: &Path, what: &str) -> Result<Run, String> {
    let binary = std::env::var("FERRY_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let profile = dir.join(format!("chromium-{what}-{}", unique()));
    let mut cmd = Command::new(&binary);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    let run = run_bounded(cmd, DEADLINE, dir, &format!("chromium-{what}"))?;
    if !run.status.success() {
        return Err(format!("{binary} {args:?} failed: {run:?}"));
    }
    Ok(run)
}

/// Runs `cmd` in its own process group with output captured in files under `dir` (named
/// after `name`), and kills the whole group when `deadline` passes and once the command has
/// exited. Err when it could not start or was killed at the deadline.
pub fn run_bounded(
    mut cmd: Command,
    deadline: Duration,
    dir: &Path,
    name: &str,
) -> Result<Run, String> {
    let tag = unique();
    let out_path = dir.join(format!("{name}-{tag}.stdout"));
    let err_path = dir.join(format!("{name}-{tag}.stderr"));
    let out = std::fs::File::create(&out_path).map_err(|e| format!("create output: {e}"))?;
    let err = std::fs::File::create(&err_path).map_err(|e| format!("create output: {e}"))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let kill_group = |pid: u32| {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    };
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() >= deadline => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(25)),
            Err(e) => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for {cmd:?}: {e}"));
            }
        }
    };
    // Children may outlive the main process (renderers, crash handlers): end them all.
    kill_group(child.id());
    let status = match status {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            return Err(format!(
                "{cmd:?} did not finish within {deadline:?}; killed. stderr:\n{stderr}"
            ));
        }
    };
    Ok(Run {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    })
}

/// A name part unique within this process run (profiles and files of concurrent tests).
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
