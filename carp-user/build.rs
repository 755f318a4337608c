//! Builds the XDP object from `carp-ebpf` with aya-build 0.2.0, which runs
//! `rustup run nightly cargo build --package carp-ebpf --bins --release
//! --target bpfel-unknown-none -Z build-std=core` and copies the `carp-ebpf`
//! binary (an eBPF ELF object) to `$OUT_DIR/carp-ebpf`; `xdp.rs` embeds it with
//! `aya::include_bytes_aligned!`.
//!
//! `carp-ebpf` is excluded from this workspace and is its own workspace root
//! (its own profiles and lock file), so the nested cargo must run inside its
//! directory: aya-build inherits our current directory, hence the
//! `set_current_dir` below. Set `AYA_BUILD_SKIP=1` to skip the eBPF build
//! (then `include_bytes_aligned!` fails, so only for tools that never compile
//! the crate, e.g. a metadata query).
use std::{env, path::PathBuf};

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", manifest_dir.display()))?;
    let ebpf_dir = root.join("carp-ebpf");
    let ebpf_dir_str = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;

    // aya-build reruns us when anything under carp-ebpf changes; the eBPF
    // crate also compiles carp-common (a path dependency outside that
    // directory), so watch it too.
    for watched in ["carp-common/src", "carp-common/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    env::set_current_dir(&ebpf_dir).with_context(|| format!("chdir {}", ebpf_dir.display()))?;
    // aya-build turns every stderr line of the nested cargo into a
    // `cargo:warning`, which cargo replays on every build of this crate; keep
    // only what matters (rustc diagnostics still arrive through the JSON
    // messages, and errors are printed in quiet mode too). Single-threaded here.
    env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "carp-ebpf",
            root_dir: ebpf_dir_str,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
