//! Packing real folders and unpacking them again.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use common::{chmod, mode, write};
use thaw_bundle::{content_hash, pack_dir, seal, unpack, Limits};

fn sample(dir: &Path) {
    write(dir, "index.js", "export default () => 'hi';\n");
    write(dir, "bin/run.sh", "#!/bin/sh\necho run\n");
    chmod(&dir.join("bin/run.sh"), 0o775);
    write(dir, ".env.example", "A=1\n");
    write(dir, "sub/deep/file.txt", "deep\n");
    fs::create_dir_all(dir.join("empty")).unwrap();
    let long = format!("{}/{}.txt", "d".repeat(120), "n".repeat(120));
    write(dir, &long, "long\n");
    symlink("sub/deep/file.txt", dir.join("link")).unwrap();
    symlink("..", dir.join("sub/up")).unwrap();
    symlink("../deep", dir.join("sub/deep/self")).unwrap();
}

#[test]
fn round_trip_keeps_files_modes_and_links() {
    let src = tempfile::tempdir().unwrap();
    sample(src.path());
    let packed = pack_dir(src.path(), &Limits::default()).unwrap();
    assert_eq!(packed.files, 5);
    assert_eq!(
        packed.unpacked_bytes,
        [27, 19, 4, 5, 5].iter().sum::<u64>(),
        "sizes of the regular files"
    );

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("nested/bundle");
    let unpacked = unpack(&packed.archive, &dest, &Limits::default()).unwrap();
    assert_eq!(unpacked.files, packed.files);
    assert_eq!(unpacked.bytes, packed.unpacked_bytes);

    let read = |rel: &str| fs::read_to_string(dest.join(rel)).unwrap();
    assert_eq!(read("index.js"), "export default () => 'hi';\n");
    assert_eq!(read(".env.example"), "A=1\n");
    assert_eq!(read("link"), "deep\n");
    assert_eq!(read("sub/up/index.js"), "export default () => 'hi';\n");
    let long = format!("{}/{}.txt", "d".repeat(120), "n".repeat(120));
    assert_eq!(read(&long), "long\n");
    assert!(dest.join("empty").is_dir());
    assert_eq!(
        fs::read_link(dest.join("link")).unwrap(),
        Path::new("sub/deep/file.txt")
    );
    assert_eq!(mode(&dest.join("bin/run.sh")), 0o755);
    assert_eq!(mode(&dest.join("index.js")), 0o644);
    assert_eq!(mode(&dest.join("sub")), 0o755);
    assert_eq!(mode(&dest), 0o755);
}

#[test]
fn same_folder_gives_same_hash() {
    let src = tempfile::tempdir().unwrap();
    sample(src.path());
    let first = pack_dir(src.path(), &Limits::default()).unwrap();
    // Touching files changes mtimes, which must not reach the archive.
    let status = Command::new("touch")
        .args(["-d", "2001-01-01"])
        .arg(src.path().join("index.js"))
        .status()
        .unwrap();
    assert!(status.success());
    let second = pack_dir(src.path(), &Limits::default()).unwrap();
    assert_eq!(content_hash(&first.archive), content_hash(&second.archive));
    assert_eq!(content_hash(&first.archive).len(), 64);
}

#[test]
fn thawignore_is_honoured_but_gitignore_is_not() {
    let src = tempfile::tempdir().unwrap();
    let dir = src.path();
    write(dir, "index.js", "1");
    write(dir, ".gitignore", "node_modules\n.env\n");
    write(dir, ".thawignore", "secret.txt\nlogs/\n*.log\n");
    write(dir, "node_modules/dep/index.js", "dep");
    write(dir, ".env", "X=1");
    write(dir, "secret.txt", "no");
    write(dir, "logs/today", "no");
    write(dir, "sub/debug.log", "no");
    write(dir, ".git/HEAD", "no");
    write(dir, "sub/.git/HEAD", "no");
    write(dir, ".thaw/entry.mjs", "old build");

    let packed = pack_dir(dir, &Limits::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("b");
    unpack(&packed.archive, &dest, &Limits::default()).unwrap();
    for kept in [
        "index.js",
        "node_modules/dep/index.js",
        ".env",
        ".gitignore",
        "sub",
    ] {
        assert!(dest.join(kept).exists(), "{kept} should be packed");
    }
    for left in [
        "secret.txt",
        "logs",
        "sub/debug.log",
        ".git",
        "sub/.git",
        ".thaw",
    ] {
        assert!(!dest.join(left).exists(), "{left} should be left out");
    }
}

#[test]
fn symlinks_leaving_the_folder_are_refused() {
    for (target, name) in [
        ("../outside", "evil"),
        ("/etc/passwd", "abs"),
        ("a/../..", "sneaky"),
    ] {
        let src = tempfile::tempdir().unwrap();
        write(src.path(), "index.js", "1");
        fs::create_dir(src.path().join("a")).unwrap();
        symlink(target, src.path().join(name)).unwrap();
        let err = pack_dir(src.path(), &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "unsafe_path", "{err}");
        let msg = err.to_string();
        assert!(msg.contains(name) && msg.contains(target), "{msg}");
    }
}

#[test]
fn special_files_are_refused() {
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "index.js", "1");
    let status = Command::new("mkfifo")
        .arg(src.path().join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    let err = pack_dir(src.path(), &Limits::default()).unwrap_err();
    assert_eq!(err.code(), "unsupported_entry");
    assert!(err.to_string().contains("`pipe` is a named pipe"), "{err}");
}

#[test]
fn missing_or_non_folder_is_refused() {
    let src = tempfile::tempdir().unwrap();
    let err = pack_dir(&src.path().join("nope"), &Limits::default()).unwrap_err();
    assert_eq!(err.code(), "bad_dir");
    assert!(err.to_string().contains("does not exist"), "{err}");
    write(src.path(), "file", "x");
    let err = pack_dir(&src.path().join("file"), &Limits::default()).unwrap_err();
    assert_eq!(err.code(), "bad_dir");
    assert!(err.to_string().contains("not a folder"), "{err}");
}

#[test]
fn pack_limits_say_size_and_limit() {
    let src = tempfile::tempdir().unwrap();
    for i in 0..5 {
        write(src.path(), &format!("f{i}.js"), &"x".repeat(1000));
    }
    let few = Limits {
        max_entries: 3,
        ..Limits::default()
    };
    let err = pack_dir(src.path(), &few).unwrap_err();
    assert_eq!(err.code(), "too_large");
    let msg = err.to_string();
    assert!(
        msg.contains('5') && msg.contains('3') && msg.contains(".thawignore"),
        "{msg}"
    );

    let small = Limits {
        max_unpacked_bytes: 2048,
        ..Limits::default()
    };
    let err = pack_dir(src.path(), &small).unwrap_err();
    assert_eq!(err.code(), "too_large");
    assert!(
        err.to_string().contains("4.9 KiB") && err.to_string().contains("2 KiB"),
        "{err}"
    );

    let tiny_archive = Limits {
        max_archive_bytes: 50,
        ..Limits::default()
    };
    let err = pack_dir(src.path(), &tiny_archive).unwrap_err();
    assert_eq!(err.code(), "too_large", "{err}");
}

#[test]
fn seal_makes_tree_read_only_without_following_links() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    write(&dir, "a.js", "1");
    write(&dir, "sub/tool", "#!/bin/sh");
    chmod(&dir.join("sub/tool"), 0o700);
    write(tmp.path(), "outside.txt", "x");
    chmod(&tmp.path().join("outside.txt"), 0o666);
    symlink("../outside.txt", dir.join("out")).unwrap();

    seal(&dir).unwrap();
    assert_eq!(mode(&dir), 0o555);
    assert_eq!(mode(&dir.join("sub")), 0o555);
    assert_eq!(mode(&dir.join("a.js")), 0o444);
    assert_eq!(mode(&dir.join("sub/tool")), 0o555);
    assert_eq!(
        mode(&tmp.path().join("outside.txt")),
        0o666,
        "link was followed"
    );

    // Let the temp dir be removed when not running as root.
    chmod(&dir, 0o755);
    chmod(&dir.join("sub"), 0o755);
}

#[test]
fn what_the_server_could_not_unpack_is_refused_before_uploading() {
    // A symlink's target is any string to the file system, but one with a
    // name over 255 bytes could never be unpacked (nor followed).
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "index.js", "export default () => 1;\n");
    let target = format!("x/{}", "t".repeat(256));
    symlink(&target, src.path().join("l")).unwrap();
    let err = pack_dir(src.path(), &Limits::default()).unwrap_err();
    assert_eq!(err.code(), "path_too_long", "{err}");
    assert!(err.to_string().contains("symlink `l -> x/ttt"), "{err}");
    assert!(err.to_string().contains("256 bytes"), "{err}");
}
