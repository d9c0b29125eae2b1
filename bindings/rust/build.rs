//! Finds libqrmsprop.so (std only, no crates):
//!
//! 1. QRMS_LIB_DIR (the directory holding libqrmsprop.so; QRMS_INCLUDE_DIR optional),
//! 2. else `pkg-config qrmsprop` (the pkg-config binary; PKG_CONFIG_PATH is honoured).
//!
//! Emits the link search path, -lqrmsprop and an rpath, so this crate's tests,
//! examples and binaries run without LD_LIBRARY_PATH. Set QRMS_NO_RPATH=1 to
//! leave the rpath out (e.g. when packaging for a system location).
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn has_library(dir: &Path) -> bool {
    ["libqrmsprop.so", "libqrmsprop.dylib", "qrmsprop.lib", "libqrmsprop.a"].iter().any(|n| dir.join(n).exists())
}

fn pkg_config(args: &[&str]) -> Result<String, String> {
    let exe = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let out =
        Command::new(&exe).args(args).arg("qrmsprop").output().map_err(|e| format!("could not run {exe}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{exe} {} qrmsprop failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// (lib dir, include dir) from pkg-config. A .pc file whose prefix does not
/// hold the library (one written for another prefix and installed with
/// `cmake --install --prefix`) falls back to the tree the .pc file lies in.
fn from_pkg_config() -> Result<(PathBuf, Option<PathBuf>), String> {
    let libdir = PathBuf::from(pkg_config(&["--variable=libdir"])?);
    let includedir = pkg_config(&["--variable=includedir"]).ok().map(PathBuf::from);
    let pcfiledir = PathBuf::from(pkg_config(&["--variable=pcfiledir"])?);
    println!("cargo:rerun-if-changed={}", pcfiledir.join("qrmsprop.pc").display());
    if has_library(&libdir) {
        return Ok((libdir, includedir));
    }
    // <prefix>/<libdir>/pkgconfig/qrmsprop.pc
    if let Some(lib) = pcfiledir.parent() {
        if has_library(lib) {
            println!(
                "cargo:warning=qrmsprop.pc says libdir={} but the library is in {}; using the latter \
                 (the .pc file names another prefix)",
                libdir.display(),
                lib.display()
            );
            let include = lib.parent().map(|p| p.join("include"));
            return Ok((lib.to_path_buf(), include));
        }
    }
    Err(format!("pkg-config found qrmsprop.pc in {} but no libqrmsprop in {}", pcfiledir.display(), libdir.display()))
}

fn main() {
    for v in ["QRMS_LIB_DIR", "QRMS_INCLUDE_DIR", "QRMS_NO_RPATH", "PKG_CONFIG", "PKG_CONFIG_PATH"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let (lib_dir, include_dir) = match env::var_os("QRMS_LIB_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if !has_library(&d) {
                panic!("QRMS_LIB_DIR={} does not contain libqrmsprop.so", d.display());
            }
            (d, env::var_os("QRMS_INCLUDE_DIR").map(PathBuf::from))
        }
        None => match from_pkg_config() {
            Ok(found) => found,
            Err(e) => panic!(
                "qrmsprop: the C library was not found. Set QRMS_LIB_DIR to the directory holding \
                 libqrmsprop.so, or make `pkg-config qrmsprop` work (PKG_CONFIG_PATH=<prefix>/lib/pkgconfig). \
                 Details: {e}"
            ),
        },
    };
    let lib_dir = lib_dir.canonicalize().unwrap_or(lib_dir);
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=qrmsprop");
    if env::var_os("QRMS_NO_RPATH").is_none() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    }
    // Metadata for dependents' build scripts: DEP_QRMSPROP_LIB_DIR, DEP_QRMSPROP_INCLUDE.
    println!("cargo:lib_dir={}", lib_dir.display());
    if let Some(inc) = include_dir {
        println!("cargo:include={}", inc.display());
    }
}
