//! Lexical path rules shared by packing, unpacking and settings, so the CLI
//! refuses exactly what the server would refuse.

/// Longest path (in bytes) a bundle may hold; Linux's PATH_MAX. Also bounds
/// how many folders one hostile entry can make us create.
pub(crate) const MAX_PATH_BYTES: usize = 4096;

/// Longest name of one file or folder (in bytes); Linux's NAME_MAX.
pub(crate) const MAX_NAME_BYTES: usize = 255;

/// Why a path is too long for the file system, worded to follow the path in
/// a message; checked before any file-system call, so that a name the
/// kernel would refuse (`ENAMETOOLONG`) is the user's error, not the host's.
///
/// `path` is slash-separated (a relative path or a symlink target). Each
/// name in it must fit NAME_MAX, and the whole, with `base` and a `/` in
/// front (the folder it is written under, when there is one) and its
/// terminating NUL, must fit PATH_MAX.
pub(crate) fn check_lengths(path: &[u8], base: Option<&std::path::Path>) -> Result<(), String> {
    if let Some(name) = path
        .split(|&b| b == b'/')
        .find(|name| name.len() > MAX_NAME_BYTES)
    {
        return Err(format!(
            "has a name of {} bytes (`{}`), over the limit of {MAX_NAME_BYTES} bytes for one \
             file or folder name: use shorter names",
            name.len(),
            show(name)
        ));
    }
    if path.len() + 1 > MAX_PATH_BYTES {
        return Err(format!(
            "is {} bytes long, over the limit of {} bytes for a whole path: use shorter paths \
             or fewer nested folders",
            path.len(),
            MAX_PATH_BYTES - 1
        ));
    }
    if let Some(base) = base {
        let joined = base.as_os_str().len() + 1 + path.len();
        if joined + 1 > MAX_PATH_BYTES {
            // The base is the server's folder: its length is not the
            // user's business, only that the whole is too long.
            return Err(format!(
                "is too long to unpack: under the folder it is unpacked into, its path would \
                 pass the limit of {MAX_PATH_BYTES} bytes for a whole path (PATH_MAX): use \
                 shorter paths or fewer nested folders"
            ));
        }
    }
    Ok(())
}

const LEAVES: &str = "leaves the bundle: paths must be relative and stay inside the folder";

/// Checks a slash-separated relative path and returns it normalised (no `.`
/// or empty components), or `None` for the bundle root itself (`.`, `./`).
/// The error is the problem, worded to follow the path in a message.
pub(crate) fn normalize_rel(path: &[u8]) -> Result<Option<String>, &'static str> {
    if path.is_empty() {
        return Err("has an empty name: every entry needs a relative path");
    }
    if path.contains(&0) {
        return Err("contains a NUL byte: names must be plain text");
    }
    if path.len() > MAX_PATH_BYTES {
        return Err("is longer than 4096 bytes: use shorter paths");
    }
    let path = std::str::from_utf8(path).map_err(|_| "is not valid UTF-8: rename it")?;
    if path.starts_with('/') {
        return Err(LEAVES);
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(LEAVES),
            _ => parts.push(part),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Checks that a symlink at `link` (a normalised relative path) pointing to
/// `target` stays inside the bundle. The rule is lexical but sound: `..` may
/// appear only at the start of the target. Later `..` (as in `x/../..`) would
/// be resolved by the kernel after following `x`, which may itself be a link,
/// so a lexical check of it proves nothing.
pub(crate) fn check_link_target(link: &str, target: &[u8]) -> Result<(), &'static str> {
    const OUTSIDE: &str = "points outside the bundle: symlinks must be relative, stay inside \
                           the folder and use `..` only at the start of the target";
    if target.is_empty() || target.contains(&0) {
        return Err("has an empty or NUL-containing target");
    }
    let target = std::str::from_utf8(target).map_err(|_| "has a target that is not valid UTF-8")?;
    if target.starts_with('/') {
        return Err(OUTSIDE);
    }
    // How many folders we may climb: the depth of the folder holding the link.
    let mut depth = link.split('/').count() - 1;
    let mut descended = false;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if descended || depth == 0 => return Err(OUTSIDE),
            ".." => depth -= 1,
            _ => descended = true,
        }
    }
    Ok(())
}

/// A name from an archive or the disk, made safe to print: lossy UTF-8,
/// control characters escaped, long names shortened.
pub(crate) fn show(name: &[u8]) -> String {
    let text = String::from_utf8_lossy(name);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == 200 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A byte count for people: `512 MiB`, `1.5 KiB`, `12 bytes`.
pub(crate) fn human(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            return if n / size * size == n {
                format!("{} {unit}", n / size)
            } else {
                format!("{:.1} {unit}", n as f64 / size as f64)
            };
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_refuses() {
        assert_eq!(
            normalize_rel(b"./a//b/./c").unwrap().as_deref(),
            Some("a/b/c")
        );
        assert_eq!(normalize_rel(b"./").unwrap(), None);
        for bad in [&b""[..], b"/etc/x", b"a/../../x", b"..", b"a\0b", b"\xff"] {
            assert!(normalize_rel(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn link_targets() {
        assert!(check_link_target("a", b"b/c").is_ok());
        assert!(check_link_target("x/y/l", b"../../z").is_ok());
        assert!(check_link_target("x/l", b"..").is_ok());
        for (link, target) in [
            ("a", &b"../x"[..]),
            ("x/l", b"../../z"),
            ("l", b"/etc/passwd"),
            ("x/l", b"y/../../z"),
            ("l", b""),
        ] {
            assert!(
                check_link_target(link, target).is_err(),
                "{link} -> {target:?}"
            );
        }
    }

    #[test]
    fn lengths() {
        let name = "n".repeat(MAX_NAME_BYTES);
        assert!(check_lengths(name.as_bytes(), None).is_ok());
        let over = "n".repeat(MAX_NAME_BYTES + 1);
        let err = check_lengths(format!("a/{over}/b").as_bytes(), None).unwrap_err();
        assert!(err.contains("256 bytes"), "{err}");
        // 4095 bytes plus the NUL fit; 4096 do not.
        let deep = |len: usize| {
            let mut p = "d/".repeat(len / 2);
            p.truncate(len - 1);
            p.push('f');
            p
        };
        assert_eq!(deep(4095).len(), 4095);
        assert!(check_lengths(deep(4095).as_bytes(), None).is_ok());
        assert!(check_lengths(deep(4096).as_bytes(), None).is_err());
        let base = std::path::Path::new("/srv/thaw/code/tree");
        let fits = deep(4095 - base.as_os_str().len() - 1);
        assert!(check_lengths(fits.as_bytes(), Some(base)).is_ok());
        let over = deep(4095 - base.as_os_str().len());
        let err = check_lengths(over.as_bytes(), Some(base)).unwrap_err();
        assert!(err.contains("PATH_MAX") && !err.contains("/srv"), "{err}");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512 << 20), "512 MiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(12), "12 bytes");
    }
}
