//! Finding kernel modules in an extracted kernel package and ordering them
//! so that each comes after what it depends on.
//!
//! A kernel .deb holds no `modules.dep` (depmod writes it at install time),
//! so dependencies are read from each module's own `.modinfo` ELF section
//! (`depends=a,b`), as depmod does.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::MicrovmError;

/// A module ready to go into the initramfs.
#[derive(Debug, Clone)]
pub(crate) struct Module {
    /// Name with `-` as `_`, as the kernel knows it.
    pub(crate) name: String,
    /// The uncompressed `.ko`.
    pub(crate) bytes: Vec<u8>,
}

/// Normalised module name of a file name such as `virtio-mmio.ko.xz`.
pub(crate) fn module_name(file_name: &str) -> String {
    file_name
        .split('.')
        .next()
        .unwrap_or(file_name)
        .replace('-', "_")
}

/// Every module file under `modules_dir`, by name.
fn index(modules_dir: &Path) -> Result<BTreeMap<String, PathBuf>, MicrovmError> {
    let mut found = BTreeMap::new();
    let mut stack = vec![modules_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir)
            .map_err(|e| MicrovmError::io(format!("reading {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path);
                continue;
            }
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.ends_with(".ko")
                || file.ends_with(".ko.xz")
                || file.ends_with(".ko.zst")
                || file.ends_with(".ko.gz")
            {
                found.insert(module_name(&file), path);
            }
        }
    }
    Ok(found)
}

/// Names listed in `modules.builtin` (built into the kernel: nothing to load).
fn builtins(modules_dir: &Path) -> BTreeSet<String> {
    fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(module_name)
        .collect()
}

/// Resolves `wanted` (names; a name that is neither a module nor built in is
/// skipped when `optional`) and their dependencies, dependencies first.
pub(crate) fn resolve(
    modules_dir: &Path,
    wanted: &[String],
    optional: &[String],
) -> Result<Vec<Module>, MicrovmError> {
    let index = index(modules_dir)?;
    let builtin = builtins(modules_dir);
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    for (name, required) in wanted
        .iter()
        .map(|n| (n, true))
        .chain(optional.iter().map(|n| (n, false)))
    {
        let name = module_name(name);
        if builtin.contains(&name) {
            continue;
        }
        if !index.contains_key(&name) {
            if required {
                return Err(MicrovmError::Image(format!(
                    "the kernel package has no module {name:?} and does not build it in; \
                     pick a kernel that has it (see docs/microvm.md)"
                )));
            }
            continue;
        }
        visit(
            &name,
            &index,
            &builtin,
            &mut done,
            &mut Vec::new(),
            &mut order,
        )?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    done: &mut BTreeSet<String>,
    path: &mut Vec<String>,
    order: &mut Vec<Module>,
) -> Result<(), MicrovmError> {
    if done.contains(name) || builtin.contains(name) {
        return Ok(());
    }
    if path.iter().any(|p| p == name) {
        return Err(MicrovmError::Image(format!(
            "module dependency cycle: {} -> {name}",
            path.join(" -> ")
        )));
    }
    let file = index.get(name).ok_or_else(|| {
        MicrovmError::Image(format!(
            "module {name:?} is needed by {path:?} but is not in the package"
        ))
    })?;
    let bytes = read_module(file)?;
    path.push(name.to_string());
    for dep in depends(&bytes) {
        visit(&dep, index, builtin, done, path, order)?;
    }
    path.pop();
    done.insert(name.to_string());
    order.push(Module {
        name: name.to_string(),
        bytes,
    });
    Ok(())
}

/// Reads a module, decompressing `.ko.xz` / `.ko.zst` / `.ko.gz` with the
/// Debian tools (the kernel loads only what the agent hands it, uncompressed).
fn read_module(path: &Path) -> Result<Vec<u8>, MicrovmError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).map_err(|e| MicrovmError::io(format!("reading {name}"), e)),
        Some(tool) => {
            let out = Command::new(tool)
                .args(["-d", "-c"])
                .arg(path)
                .output()
                .map_err(|e| {
                    MicrovmError::io(
                        format!("running {tool} to decompress {name} (install it)"),
                        e,
                    )
                })?;
            if !out.status.success() {
                return Err(MicrovmError::Image(format!(
                    "{tool} could not decompress {name}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(out.stdout)
        }
    }
}

/// The `depends=` entry of a module's `.modinfo` section.
pub(crate) fn depends(elf: &[u8]) -> Vec<String> {
    let Some(modinfo) = elf_section(elf, ".modinfo") else {
        return Vec::new();
    };
    modinfo
        .split(|&b| b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .map(module_name)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect()
}

/// The bytes of a named section of a little-endian ELF64 file.
fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if elf.get(..4)? != b"\x7fELF" || elf.get(4)? != &2 || elf.get(5)? != &1 {
        return None;
    }
    let shoff = u64_at(0x28)?;
    let shentsize = u16_at(0x3a)?;
    let shnum = u16_at(0x3c)?;
    let shstrndx = u16_at(0x3e)?;
    let section = |i: usize| {
        let h = shoff + i * shentsize;
        Some((elf.get(h..h + 4)?, u64_at(h + 0x18)?, u64_at(h + 0x20)?))
    };
    let (_, names_off, names_size) = section(shstrndx)?;
    let names = elf.get(names_off..names_off + names_size)?;
    for i in 0..shnum {
        let (name_idx, off, size) = section(i)?;
        let name_idx = u32::from_le_bytes(name_idx.try_into().ok()?) as usize;
        let name = names.get(name_idx..)?.split(|&b| b == 0).next()?;
        if name == wanted.as_bytes() {
            return elf.get(off..off + size);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised() {
        assert_eq!(module_name("virtio-mmio.ko.xz"), "virtio_mmio");
        assert_eq!(module_name("virtio_console.ko"), "virtio_console");
    }

    #[test]
    fn depends_reads_the_modinfo_section_of_a_real_elf() {
        // Build a minimal ELF64 with a .modinfo section by hand.
        let modinfo = b"license=GPL\0depends=virtio,virtio-ring\0name=x\0";
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let shstr_off = elf.len();
        elf.extend_from_slice(shstr);
        let shoff = elf.len();
        let sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        let (null, strtab, info) = (
            sh(0, 0, 0),
            sh(1, shstr_off, shstr.len()),
            sh(11, modinfo_off, modinfo.len()),
        );
        elf.extend(null);
        elf.extend(strtab);
        elf.extend(info);
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(depends(&elf), ["virtio", "virtio_ring"]);
        assert!(depends(b"not an elf").is_empty());
    }
}
