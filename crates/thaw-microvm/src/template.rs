//! Runtime snapshots ("templates"): a VM booted once, left when the shim
//! is ready, paused and saved; and VMs restored from it.
//!
//! Guest RAM lives in a memfd QEMU maps `share=on` while the template
//! runs, so the guest writes straight into it. The migration stream
//! (`<template>/state`) then only holds device state, as the
//! `x-ignore-shared` capability leaves shared file-backed RAM out. The
//! memfd is saved to `<template>/memory` (sparse) and sealed against
//! writes; a restore maps it `share=off`: pages are shared by every
//! restored VM and copied only when a guest writes them (`memory.rs`).
//!
//! QEMU never opens a file of the template: the memory is its fd 3, and
//! the state travels as a descriptor over QMP (`getfd`, then `fd:` as the
//! migration URI), so a VMM in a jail needs no view of the template.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::image::ImageInfo;
use crate::memory::GuestMemory;
use crate::vm::{Accel, Launch, MemoryFile, Vm, VmOptions};
use crate::MicrovmError;

/// 2: RAM saved from a memfd, the code drive a `null-co` placeholder.
const TEMPLATE_FORMAT: u32 = 2;

/// A runtime snapshot on disk, as recorded in `<dir>/template.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Template {
    pub format: u32,
    pub dir: PathBuf,
    pub image: ImageInfo,
    pub accel: Accel,
    pub memory_mib: u32,
    /// Size of the saved device state (guest RAM is in `memory`).
    pub state_bytes: u64,
    /// The memory as restores map it: a sealed memfd, loaded from
    /// `memory` at the first restore (or kept from `create`).
    #[serde(skip)]
    loaded: Arc<Mutex<Option<Arc<GuestMemory>>>>,
}

impl Template {
    fn memory(&self) -> PathBuf {
        self.dir.join("memory")
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The sealed memfd restores map, loaded once.
    fn guest_memory(&self) -> Result<Arc<GuestMemory>, MicrovmError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(memory) = &*loaded {
            return Ok(memory.clone());
        }
        let memory = Arc::new(GuestMemory::load(&self.memory())?);
        if memory.bytes() != u64::from(self.memory_mib) << 20 {
            return Err(MicrovmError::Template(format!(
                "{} holds {} bytes, not the {} MiB the template was made with; make it again",
                self.memory().display(),
                memory.bytes(),
                self.memory_mib
            )));
        }
        *loaded = Some(memory.clone());
        Ok(memory)
    }

    /// Reads a template made before.
    pub fn load(dir: &Path) -> Result<Template, MicrovmError> {
        let path = dir.join("template.json");
        let bytes = fs::read(&path)
            .map_err(|e| MicrovmError::io(format!("reading {}", path.display()), e))?;
        let t: Template = serde_json::from_slice(&bytes).map_err(|e| {
            MicrovmError::Template(format!("{} is not a template record: {e}", path.display()))
        })?;
        if t.format != TEMPLATE_FORMAT {
            return Err(MicrovmError::Template(format!(
                "{} was made by another version of thaw (format {}); make it again",
                dir.display(),
                t.format
            )));
        }
        Ok(t)
    }

    /// Boots `image`, waits until the runtime has announced itself, pauses
    /// and saves it into `dir` (replacing what was there).
    ///
    /// The host does not connect the protocol port while the template runs,
    /// so the shim's `ready` frame waits in the agent and is part of the
    /// snapshot: each restored VM sends it when its host connects, and looks
    /// to thaw exactly like a freshly started runtime.
    pub async fn create(
        image: &ImageInfo,
        opts: &VmOptions,
        dir: &Path,
    ) -> Result<Template, MicrovmError> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)
            .map_err(|e| MicrovmError::io(format!("creating {}", dir.display()), e))?;
        let mut template = Template {
            format: TEMPLATE_FORMAT,
            dir: dir.to_path_buf(),
            image: image.clone(),
            accel: opts.accel,
            memory_mib: opts.memory_mib,
            state_bytes: 0,
            loaded: Arc::default(),
        };
        let memory = GuestMemory::new(u64::from(opts.memory_mib) << 20)?;
        let launch = Launch {
            image,
            opts,
            memory: Some(MemoryFile {
                memory: &memory,
                shared: true,
            }),
            code_drive: true,
            incoming: false,
        };
        let mut vm = Vm::launch(&launch, false).await?;
        vm.sync_clock().await?;
        wait_runtime_ready(&mut vm, opts.timeout).await?;

        vm.pause().await?;
        set_ignore_shared(&mut vm).await?;
        let tmp = dir.join("state.tmp");
        let state = fs::File::create(&tmp)
            .map_err(|e| MicrovmError::io(format!("creating {}", tmp.display()), e))?;
        vm.qmp()
            .execute_with_fd("getfd", json!({ "fdname": "state" }), state.as_fd())
            .await?;
        drop(state);
        vm.qmp()
            .execute("migrate", json!({ "uri": "fd:state" }))
            .await?;
        vm.qmp().wait_migration(opts.timeout).await?;
        // Nothing may map the memory shared and writable when it is sealed.
        vm.shut_down().await;
        let save = tokio::task::spawn_blocking({
            let path = template.memory();
            move || {
                memory
                    .save(&path)
                    .and_then(|()| memory.seal())
                    .map(|()| memory)
            }
        });
        let memory = save
            .await
            .map_err(|e| MicrovmError::Template(format!("saving the memory panicked: {e}")))??;
        *template.loaded.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(memory));
        fs::rename(&tmp, template.state())
            .map_err(|e| MicrovmError::io("moving the snapshot state in place", e))?;
        template.state_bytes = fs::metadata(template.state()).map(|m| m.len()).unwrap_or(0);
        let json = serde_json::to_vec_pretty(&template).expect("a template record serialises");
        fs::write(dir.join("template.json"), json)
            .map_err(|e| MicrovmError::io("writing template.json", e))?;
        Ok(template)
    }

    /// Starts a VM from this snapshot and lets it run (clock resynced).
    /// Its protocol stream yields the runtime's `ready` frame first.
    pub async fn restore(&self, opts: &VmOptions) -> Result<Vm, MicrovmError> {
        let mut vm = self.restore_paused(opts).await?;
        vm.resume().await?;
        Ok(vm)
    }

    /// Starts a VM from this snapshot and leaves it paused, off the CPU,
    /// for a pool: [`Vm::resume`] lets it run.
    pub async fn restore_paused(&self, opts: &VmOptions) -> Result<Vm, MicrovmError> {
        let mut opts = opts.clone();
        opts.accel = self.accel;
        opts.memory_mib = self.memory_mib;
        let memory = {
            let template = self.clone();
            tokio::task::spawn_blocking(move || template.guest_memory())
                .await
                .map_err(|e| {
                    MicrovmError::Template(format!("loading the memory panicked: {e}"))
                })??
        };
        let state = fs::File::open(self.state())
            .map_err(|e| MicrovmError::io(format!("opening {}", self.state().display()), e))?;
        let launch = Launch {
            image: &self.image,
            opts: &opts,
            memory: Some(MemoryFile {
                memory: &memory,
                shared: false,
            }),
            code_drive: true,
            incoming: true,
        };
        let mut vm = Vm::launch(&launch, true).await?;
        set_ignore_shared(&mut vm).await?;
        vm.qmp()
            .execute_with_fd("getfd", json!({ "fdname": "state" }), state.as_fd())
            .await?;
        vm.qmp()
            .execute("migrate-incoming", json!({ "uri": "fd:state" }))
            .await?;
        let deadline = tokio::time::Instant::now() + opts.timeout;
        loop {
            match vm.qmp().status().await?.as_str() {
                "inmigrate" | "prelaunch" => {}
                "paused" | "postmigrate" => return Ok(vm),
                other => {
                    return Err(MicrovmError::Template(format!(
                        "the restored VM is {other:?}, not paused\n{}",
                        vm.diagnostics()
                    )))
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(MicrovmError::Timeout(format!(
                    "restoring {}",
                    self.dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Starts a VM from `template`: see [`Template::restore`].
pub async fn restore(template: &Template, opts: &VmOptions) -> Result<Vm, MicrovmError> {
    template.restore(opts).await
}

async fn set_ignore_shared(vm: &mut Vm) -> Result<(), MicrovmError> {
    vm.qmp()
        .execute(
            "migrate-set-capabilities",
            json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] }),
        )
        .await
        .map(|_| ())
}

/// Asks the agent until it reports that the runtime has written its first
/// whole frame (`ready`).
async fn wait_runtime_ready(vm: &mut Vm, timeout: Duration) -> Result<(), MicrovmError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = vm.control("ping").await?;
        if status.split_whitespace().any(|w| w == "runtime=ready") {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(MicrovmError::Timeout(format!(
                "the runtime did not announce itself within {timeout:?} (agent: {status})\n{}",
                vm.diagnostics()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
