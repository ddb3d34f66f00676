//! Read-only images of file trees: a function's code tree and the
//! runtime's shim directory as EROFS images, kept beside the tree as
//! `<tree>.erofs`. The process driver mounts them in jails from loop
//! devices (`thaw_jail::Image`), so that inside, `/proc/self/mountinfo`
//! names no host path; the microvm driver puts a code image behind its
//! VM's code drive.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use thaw_jail::Image;
use tokio::sync::OnceCell;

/// The filesystem type of images from [`build_erofs_image`].
pub const IMAGE_FSTYPE: &str = "erofs";

/// What went wrong making or mounting an image; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "could not run mkfs.erofs ({0}): install the erofs-utils package (`cargo xtask setup` does)"
    )]
    NoMkfs(#[source] std::io::Error),
    #[error("mkfs.erofs {tree} failed: {message}")]
    Mkfs { tree: PathBuf, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not mount the image: {0}")]
    Mount(#[from] thaw_jail::JailError),
}

/// Where the image of `tree` is kept: `<tree>.erofs`, beside it, so it
/// goes with the tree (the registry's garbage collection removes both).
pub fn image_path(tree: &Path) -> PathBuf {
    let mut name = tree.as_os_str().to_owned();
    name.push(".erofs");
    PathBuf::from(name)
}

/// Builds an EROFS image of `tree` at `out`: every file owned by root,
/// fixed timestamps and UUID, so the same tree gives the same bytes.
/// Written under a temporary name beside `out` and renamed, so `out` is
/// whole or absent, whoever else builds it at the same time. Needs
/// `mkfs.erofs` (Debian's `erofs-utils`, which `cargo xtask setup`
/// installs).
pub fn build_erofs_image(tree: &Path, out: &Path) -> Result<(), ImageError> {
    static BUILDS: AtomicU64 = AtomicU64::new(0);
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        BUILDS.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let output = Command::new("mkfs.erofs")
        .args([
            "--quiet",
            "--all-root",
            "-T0",
            "-U00000000-0000-0000-0000-000000000000",
        ])
        .arg(&tmp)
        .arg(tree)
        .output()
        .map_err(ImageError::NoMkfs)?;
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(ImageError::Mkfs {
            tree: tree.to_path_buf(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    fs::rename(&tmp, out).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        ImageError::Io {
            what: format!("moving the image to {}", out.display()),
            source,
        }
    })
}

/// The image of `tree` on a loop device, ready to mount; its image file is
/// built first when missing. Blocking: mkfs.erofs takes milliseconds per
/// megabyte, the loop device about one.
pub(crate) fn hold_image(tree: &Path) -> Result<Image, ImageError> {
    let image = image_path(tree);
    if !image.exists() {
        build_erofs_image(tree, &image)?;
    }
    Ok(Image::open(&image, IMAGE_FSTYPE)?)
}

/// The images of code trees a driver holds, by tree: each made the first
/// time its tree is attached and held until the tree is forgotten (no
/// version uses it any more), so that every later cold start only mounts
/// it. A new version's first attach is its deploy's own trial load, so no
/// call waits for its image. A tree whose image cannot be made is bound
/// instead, with a warning once.
#[derive(Default)]
pub(crate) struct CodeImages {
    held: Mutex<HashMap<PathBuf, Arc<CodeImage>>>,
}

/// One tree's image, made by the first attach that asks (the others
/// wait); `None` when the tree is to be bound.
type CodeImage = OnceCell<Option<Arc<Image>>>;

impl CodeImages {
    /// The image of `tree`, or `None` when it is to be bound.
    pub async fn get(&self, tree: &Path) -> Option<Arc<Image>> {
        let cell = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tree.to_path_buf())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let dir = tree.to_path_buf();
            let made = tokio::task::spawn_blocking(move || hold_image(&dir)).await;
            match made {
                Ok(Ok(image)) => Some(Arc::new(image)),
                Ok(Err(e)) => {
                    tracing::warn!(
                        "the code at {} is bound from the data directory, so its instances see that path: {e}",
                        tree.display()
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!("making the image of {} failed: {e}", tree.display());
                    None
                }
            }
        })
        .await
        .clone()
    }

    /// Lets go of the image of `tree`; its loop device goes once no
    /// instance has it mounted.
    pub fn forget(&self, tree: &Path) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tree);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tree")).unwrap();
        for (name, text) in files {
            fs::write(dir.path().join("tree").join(name), text).unwrap();
        }
        dir
    }

    /// Whether the loop device `/dev/loopN` is bound to a file.
    fn bound(image: &Image) -> bool {
        let name = image.device().file_name().unwrap().to_owned();
        Path::new("/sys/block")
            .join(name)
            .join("loop/backing_file")
            .exists()
    }

    #[test]
    fn the_same_tree_gives_the_same_image_and_nothing_is_left_beside_it() {
        let dir = tree(&[("index.mjs", "export const main = () => 1;")]);
        let tree = dir.path().join("tree");
        let (a, b) = (dir.path().join("a.erofs"), dir.path().join("b.erofs"));
        build_erofs_image(&tree, &a).unwrap();
        build_erofs_image(&tree, &b).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.erofs", "b.erofs", "tree"]);
        assert_eq!(image_path(&tree), dir.path().join("tree.erofs"));
    }

    #[test]
    fn a_tree_that_is_not_there_fails_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = build_erofs_image(&missing, &dir.path().join("x.erofs")).unwrap_err();
        assert!(matches!(e, ImageError::Mkfs { .. }), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[tokio::test]
    async fn a_tree_is_made_an_image_once_and_let_go_when_forgotten() {
        let dir = tree(&[("index.mjs", "export const main = () => 1;")]);
        let tree = dir.path().join("tree");
        let images = CodeImages::default();
        let first = images.get(&tree).await.expect("an image");
        assert!(image_path(&tree).is_file());
        let again = images.get(&tree).await.expect("an image");
        assert!(Arc::ptr_eq(&first, &again), "made once");
        assert!(bound(&first));

        images.forget(&tree);
        drop(again);
        let device = first.device().to_path_buf();
        let held = Arc::into_inner(first).expect("no one else holds it");
        drop(held);
        let name = device.file_name().unwrap().to_owned();
        let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while backing.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{device:?} still bound"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let fresh = images.get(&tree).await.expect("made again");
        assert!(bound(&fresh));
    }
}
