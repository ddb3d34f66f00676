//! Hand-made hostile archives. Headers are written byte by byte so the tar
//! crate's own safety checks cannot stop us from building them.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};
use thaw_bundle::{unpack, BundleError, Limits};

struct Raw<'a> {
    name: &'a [u8],
    kind: EntryType,
    link: &'a [u8],
    data: Vec<u8>,
    mode: u32,
}

fn file<'a>(name: &'a str, data: &str) -> Raw<'a> {
    Raw {
        name: name.as_bytes(),
        kind: EntryType::Regular,
        link: b"",
        data: data.as_bytes().to_vec(),
        mode: 0o644,
    }
}

fn dir(name: &str) -> Raw<'_> {
    Raw {
        kind: EntryType::Directory,
        mode: 0o755,
        ..file(name, "")
    }
}

fn link<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        kind: EntryType::Symlink,
        link: target.as_bytes(),
        mode: 0o777,
        ..file(name, "")
    }
}

fn special<'a>(name: &'a str, kind: EntryType, target: &'a str) -> Raw<'a> {
    Raw {
        kind,
        link: target.as_bytes(),
        ..file(name, "")
    }
}

fn header(name: &[u8], kind: EntryType, link: &[u8], size: u64, mode: u32) -> Header {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_cksum();
    h
}

fn write_block(out: &mut impl Write, data: &[u8]) {
    out.write_all(data).unwrap();
    let pad = (512 - data.len() % 512) % 512;
    out.write_all(&vec![0; pad]).unwrap();
}

fn archive(entries: &[Raw]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for e in entries {
        let h = header(e.name, e.kind, e.link, e.data.len() as u64, e.mode);
        gz.write_all(h.as_bytes()).unwrap();
        write_block(&mut gz, &e.data);
    }
    gz.write_all(&[0; 1024]).unwrap();
    gz.finish().unwrap()
}

/// Unpacks into a fresh dest; returns the error and checks dest is gone.
fn refuse(archive: &[u8], limits: &Limits) -> BundleError {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("bundle");
    let err = unpack(archive, &dest, limits).expect_err("hostile archive was accepted");
    assert!(!dest.exists(), "partial dest left behind after: {err}");
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "something was written outside dest"
    );
    err
}

fn assert_refused(entries: &[Raw], code: &str, needle: &str) {
    let err = refuse(&archive(entries), &Limits::default());
    assert_eq!(err.code(), code, "{err}");
    assert!(err.to_string().contains(needle), "`{needle}` not in: {err}");
}

#[test]
fn paths_leaving_the_bundle() {
    let leaves = "leaves the bundle: paths must be relative and stay inside the folder";
    assert_refused(
        &[file("../x", "x")],
        "unsafe_path",
        "`../x` leaves the bundle",
    );
    assert_refused(&[file("/etc/x", "x")], "unsafe_path", leaves);
    assert_refused(&[file("a/../../x", "x")], "unsafe_path", leaves);
    assert_refused(&[file("ok", "1"), dir("..")], "unsafe_path", leaves);
}

#[test]
fn odd_names() {
    assert_refused(&[file("", "x")], "unsafe_path", "empty name");
    assert_refused(&[file(".", "x")], "unsafe_path", "bundle folder itself");
    let bad_utf8 = Raw {
        name: b"\xff\xfe",
        ..file("", "x")
    };
    assert_refused(&[bad_utf8], "unsafe_path", "UTF-8");
}

#[test]
fn nul_in_a_long_name() {
    // A GNU long-name record can carry bytes a plain header cannot.
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    let name = b"a\0/../../x\0";
    let h = header(
        b"././@LongLink",
        EntryType::GNULongName,
        b"",
        name.len() as u64,
        0o644,
    );
    gz.write_all(h.as_bytes()).unwrap();
    write_block(&mut gz, name);
    gz.write_all(header(b"short", EntryType::Regular, b"", 0, 0o644).as_bytes())
        .unwrap();
    gz.write_all(&[0; 1024]).unwrap();
    let err = refuse(&gz.finish().unwrap(), &Limits::default());
    assert_eq!(err.code(), "unsafe_path", "{err}");
    assert!(err.to_string().contains("NUL"), "{err}");
}

#[test]
fn symlinks_leaving_the_bundle() {
    assert_refused(
        &[link("pw", "/etc/passwd")],
        "unsafe_path",
        "pw -> /etc/passwd",
    );
    assert_refused(
        &[link("a", "../..")],
        "unsafe_path",
        "points outside the bundle",
    );
    assert_refused(&[link("a/b", "../../x")], "unsafe_path", "points outside");
    // Fine lexically, but `x` may itself be a link: refused.
    assert_refused(
        &[link("x", "."), link("y", "x/../z")],
        "unsafe_path",
        "y -> x/../z",
    );
}

#[test]
fn writing_through_a_symlink() {
    let through = "is inside the symlink `link`";
    assert_refused(
        &[link("link", "sub"), dir("sub"), file("link/evil", "x")],
        "unsafe_path",
        through,
    );
    assert_refused(
        &[link("link", "."), dir("link/deeper")],
        "unsafe_path",
        through,
    );
    assert_refused(
        &[link("link", "."), link("link/l2", "x")],
        "unsafe_path",
        through,
    );
}

#[test]
fn unsupported_entry_types() {
    for (kind, what) in [
        (EntryType::Link, "hard link"),
        (EntryType::Char, "device file"),
        (EntryType::Block, "device file"),
        (EntryType::Fifo, "named pipe"),
    ] {
        let err = refuse(
            &archive(&[special("thing", kind, "index.js")]),
            &Limits::default(),
        );
        assert_eq!(err.code(), "unsupported_entry", "{err}");
        assert!(
            err.to_string().contains(&format!("`thing` is a {what}")),
            "{err}"
        );
    }
}

#[test]
fn duplicates_and_clashes() {
    assert_refused(
        &[file("a", "1"), file("a", "2")],
        "duplicate_entry",
        "`a` appears more",
    );
    assert_refused(
        &[file("a", "1"), file("./a", "2")],
        "duplicate_entry",
        "`a`",
    );
    assert_refused(&[file("a", "1"), dir("a")], "duplicate_entry", "`a`");
    assert_refused(&[link("a", "b"), file("a", "2")], "duplicate_entry", "`a`");
    assert_refused(
        &[file("a/b", "1"), file("a", "2")],
        "duplicate_entry",
        "`a`",
    );
    assert_refused(
        &[file("a", "1"), file("a/b", "2")],
        "duplicate_entry",
        "`a`",
    );
}

#[test]
fn gzip_bomb_is_stopped_by_bytes_written() {
    let limits = Limits {
        max_unpacked_bytes: 1 << 20,
        ..Limits::default()
    };
    let zeros = Raw {
        data: vec![0; 8 << 20],
        ..file("zeros", "")
    };
    let bomb = archive(&[zeros]);
    assert!(bomb.len() < 64 << 10, "the test archive should be small");
    let err = refuse(&bomb, &limits);
    assert_eq!(err.code(), "too_large", "{err}");
    assert!(err.to_string().contains("1 MiB"), "{err}");

    // Headers that lie about sizes do not help: a directory with a huge size
    // is skipped data, still bounded by the stream cap.
    let big_dir = Raw {
        data: vec![0; 8 << 20],
        ..dir("d")
    };
    let small = Limits {
        max_unpacked_bytes: 1 << 20,
        max_entries: 10,
        ..Limits::default()
    };
    let err = refuse(&archive(&[big_dir]), &small);
    assert_eq!(err.code(), "too_large", "{err}");
}

#[test]
fn too_many_entries() {
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let entries: Vec<Raw> = names.iter().map(|n| file(n, "x")).collect();
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let err = refuse(&archive(&entries), &limits);
    assert_eq!(err.code(), "too_large", "{err}");
    assert!(err.to_string().contains("more than 10"), "{err}");

    // Folders made on the way count too.
    let deep = archive(&[file("a/b/c/d/e/f/g/h/i/j/k/l", "x")]);
    assert_eq!(refuse(&deep, &limits).code(), "too_large");
}

#[test]
fn oversized_compressed_archive() {
    let limits = Limits {
        max_archive_bytes: 10,
        ..Limits::default()
    };
    let err = refuse(&archive(&[file("a", "1")]), &limits);
    assert_eq!(err.code(), "too_large");
}

#[test]
fn garbage_and_truncation() {
    let err = refuse(b"this is not gzip", &Limits::default());
    assert_eq!(err.code(), "bad_archive", "{err}");
    let full = archive(&[file("a", &"x".repeat(5000)), file("b", "y")]);
    // Cut the uncompressed stream inside a's data and recompress.
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&full[..]), &mut tar).unwrap();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&tar[..2000]).unwrap();
    let err = refuse(&gz.finish().unwrap(), &Limits::default());
    assert_eq!(err.code(), "bad_archive", "{err}");
}

#[test]
fn modes_are_normalised() {
    let setuid = Raw {
        mode: 0o4777,
        ..file("tool", "#!/bin/sh")
    };
    let sticky_dir = Raw {
        mode: 0o1777,
        ..dir("tmp")
    };
    let private = Raw {
        mode: 0o600,
        ..file("tmp/data", "x")
    };
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("b");
    let done = unpack(
        &archive(&[setuid, sticky_dir, private]),
        &dest,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!((done.files, done.bytes), (2, 10));
    assert_eq!(common::mode(&dest.join("tool")), 0o755);
    assert_eq!(common::mode(&dest.join("tmp")), 0o755);
    assert_eq!(common::mode(&dest.join("tmp/data")), 0o644);
}

#[test]
fn implicit_folders_and_root_entry_are_fine() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("b");
    let entries = [
        dir("./"),
        file("a/b/c.txt", "c"),
        dir("a"),
        link("a/l", "b/c.txt"),
    ];
    unpack(&archive(&entries), &dest, &Limits::default()).unwrap();
    assert_eq!(fs::read_to_string(dest.join("a/l")).unwrap(), "c");
}

#[test]
fn existing_dest_is_refused_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("b");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("keep"), "k").unwrap();
    let err = unpack(&archive(&[file("a", "1")]), &dest, &Limits::default()).unwrap_err();
    assert_eq!(err.code(), "io_error");
    assert!(Path::new(&dest.join("keep")).exists());
}

/// An entry whose name (and link target) may be longer than a plain header
/// holds: GNU long-name and long-link records in front of it.
fn long_entry(gz: &mut impl Write, name: &[u8], kind: EntryType, target: &[u8], data: &[u8]) {
    for (record, value) in [
        (EntryType::GNULongName, name),
        (EntryType::GNULongLink, target),
    ] {
        if value.is_empty() {
            continue;
        }
        let h = header(b"././@LongLink", record, b"", value.len() as u64, 0o644);
        gz.write_all(h.as_bytes()).unwrap();
        write_block(gz, value);
    }
    let h = header(b"short", kind, b"", data.len() as u64, 0o644);
    gz.write_all(h.as_bytes()).unwrap();
    write_block(gz, data);
}

fn long_archive(entries: &[(&[u8], EntryType, &[u8])]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for (name, kind, target) in entries {
        long_entry(&mut gz, name, *kind, target, b"x");
    }
    gz.write_all(&[0; 1024]).unwrap();
    gz.finish().unwrap()
}

/// A relative path of exactly `len` bytes, in folders of 100-byte names.
fn deep(len: usize) -> String {
    let mut p = String::new();
    while p.len() + 101 < len {
        p.push_str(&"d".repeat(100));
        p.push('/');
    }
    p.push_str(&"f".repeat(len - p.len()));
    p
}

#[test]
fn names_too_long_for_the_file_system() {
    // 255 bytes is NAME_MAX: fine.
    let tmp = tempfile::tempdir().unwrap();
    let longest = format!("sub/{}", "n".repeat(255));
    let archive = long_archive(&[(longest.as_bytes(), EntryType::Regular, b"")]);
    unpack(&archive, &tmp.path().join("ok"), &Limits::default()).unwrap();
    assert!(tmp.path().join("ok").join(&longest).is_file());

    // One byte more is the archive's fault (400), not the host's (io_error,
    // a 500): caught before the kernel would say ENAMETOOLONG.
    let name = format!("sub/{}", "n".repeat(256));
    let err = refuse(
        &long_archive(&[(name.as_bytes(), EntryType::Regular, b"")]),
        &Limits::default(),
    );
    assert_eq!(err.code(), "path_too_long", "{err}");
    let text = err.to_string();
    assert!(text.contains("archive entry `sub/nnnn"), "{text}");
    assert!(text.contains("a name of 256 bytes"), "{text}");
    assert!(text.contains("limit of 255 bytes"), "{text}");
    // The path is shown shortened, as every name from an archive is.
    assert!(text.contains('…') && text.len() < 1000, "{text}");

    // A folder entry too.
    let err = refuse(
        &long_archive(&[(name.as_bytes(), EntryType::Directory, b"")]),
        &Limits::default(),
    );
    assert_eq!(err.code(), "path_too_long", "{err}");
}

#[test]
fn paths_too_long_once_unpacked() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("bundle");
    // Short enough alone, too long under the folder it is unpacked into.
    let room = 4095 - dest.as_os_str().len() - 1;
    let fits = deep(room);
    let archive = long_archive(&[(fits.as_bytes(), EntryType::Regular, b"")]);
    unpack(&archive, &dest, &Limits::default()).unwrap();

    let over = deep(room + 1);
    let err = refuse(
        &long_archive(&[(over.as_bytes(), EntryType::Regular, b"")]),
        &Limits::default(),
    );
    assert_eq!(err.code(), "path_too_long", "{err}");
    let text = err.to_string();
    assert!(text.contains("archive entry `dddd"), "{text}");
    assert!(text.contains("PATH_MAX"), "{text}");
    // The server's own folder is not the user's business.
    let tmp_name = tmp.path().to_string_lossy().into_owned();
    assert!(!text.contains(&tmp_name), "{text}");

    // Over PATH_MAX on its own, whatever the folder.
    for len in [4096, 10_000] {
        let err = refuse(
            &long_archive(&[(deep(len).as_bytes(), EntryType::Regular, b"")]),
            &Limits::default(),
        );
        assert_eq!(err.code(), "path_too_long", "{err}");
        assert!(
            err.to_string().contains(&format!("is {len} bytes long")),
            "{err}"
        );
    }
}

#[test]
fn symlink_targets_too_long() {
    let long_name = format!("x/{}", "t".repeat(256));
    let err = refuse(
        &long_archive(&[(b"l", EntryType::Symlink, long_name.as_bytes())]),
        &Limits::default(),
    );
    assert_eq!(err.code(), "path_too_long", "{err}");
    assert!(err.to_string().contains("symlink `l -> x/ttt"), "{err}");

    let long_target = deep(4096);
    let err = refuse(
        &long_archive(&[(b"l", EntryType::Symlink, long_target.as_bytes())]),
        &Limits::default(),
    );
    assert_eq!(err.code(), "path_too_long", "{err}");
}
