//! Links the `community-gateway` daemon as a position-dependent executable
//! on Linux/glibc targets.
//!
//! Why: a position-independent executable (rustc's default) has about
//! 37,000 relocations (vtables, panic locations, string tables). The dynamic
//! loader reads all of them at start and writes every page of
//! `.data.rel.ro`, so about 0.9 MB of relocation tables and 1.1 MB of dirty
//! copies stay resident: 2 MB of the 20 MB budget (SPEC §7), measured with
//! `cargo bench --bench load`. Linked at a fixed address, the tables are
//! resolved at link time and those pages are clean and read on demand.
//!
//! The cost: the executable's own code is not placed at a random address
//! (libraries, heap, stacks and mappings still are). For a binary written in
//! safe Rust we judge 2 MB worth more. `CG_PIE=1 cargo build --release`
//! builds the default position-independent executable instead.
//!
//! Only the binary is affected (`rustc-link-arg-bins`); tests, benches and
//! the library keep rustc's defaults.

fn main() {
    println!("cargo:rerun-if-env-changed=CG_PIE");
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let pie = std::env::var("CG_PIE").is_ok_and(|v| v == "1");
    if os == "linux" && env == "gnu" && !pie {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
