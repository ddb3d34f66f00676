//! Measures, under the accelerator the probe picks (or `--tcg`), boot to
//! first answer against restore to first answer, and the CPU time and PSS
//! of idle restored VMs. The figures in docs/microvm.md come from
//! `cargo run --release -p thaw-microvm --example measure -- --tcg`;
//! `--kernel cloud|built|PATH` picks the guest kernel (PATH: a bzImage with
//! everything built in).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use thaw_microvm::{
    build_code_image, probe_accel, Accel, GuestKernel, Template, Vm, VmOptions, CODE_FSTYPE,
};

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// User + system CPU time of a process, in clock ticks (`/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> u64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as u64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let force_tcg = args.iter().any(|a| a == "--tcg");
    let boots: usize = 3;
    let restores: usize = 7;
    let idle_vms: usize = 4;

    let kernel = match args
        .iter()
        .position(|a| a == "--kernel")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
    {
        None => GuestKernel::default(),
        Some("cloud") => GuestKernel::Cloud,
        Some("built") => GuestKernel::Built,
        Some(path) => GuestKernel::Prebuilt(path.into()),
    };
    let image = image_with(kernel);
    let run = run_dir();
    let accel = if force_tcg {
        Accel::Tcg
    } else {
        let probe = probe_accel(
            &image,
            &VmOptions::new(Accel::Tcg, run.path()),
            &data_dir().join("accel.json"),
        )
        .await;
        println!(
            "accelerator: {:?} ({}{})",
            probe.accel,
            probe.reason,
            if probe.cached { ", cached" } else { "" }
        );
        probe.accel
    };
    let mut opts = VmOptions::new(accel, run.path());
    opts.timeout = TIMEOUT;
    println!(
        "image {} (kernel {}, initramfs {} MiB), guest RAM {} MiB, {accel:?}",
        image.id,
        image.kernel_release,
        image.initramfs_bytes >> 20,
        opts.memory_mib
    );

    let mut boot_times = Vec::new();
    for i in 0..boots {
        let t = Instant::now();
        let mut vm = Vm::boot(&image, &opts).await.unwrap();
        let mut ch = vm.take_channel().unwrap();
        expect_ready(&mut ch).await;
        let ready = t.elapsed();
        init_and_invoke(&mut ch, BUILTIN_CODE_DIR, json!(i)).await;
        let total = t.elapsed();
        println!("boot {i}: ready {}, first answer {}", ms(ready), ms(total));
        boot_times.push(total);
    }

    let t = Instant::now();
    let template = Template::create(
        &image,
        &opts,
        &data_dir()
            .join("templates")
            .join(format!("measure-{}", image.id)),
    )
    .await
    .unwrap();
    println!(
        "template: made in {}, device state {} KiB",
        ms(t.elapsed()),
        template.state_bytes >> 10
    );

    let code = tempfile::tempdir().unwrap();
    std::fs::write(code.path().join("index.mjs"), TEST_HANDLER).unwrap();
    let code_image = code.path().join("code.erofs");
    build_code_image(code.path(), &code_image).unwrap();

    let mut restore_times = Vec::new();
    for i in 0..restores {
        let t = Instant::now();
        let mut vm = template.restore(&opts).await.unwrap();
        let restored = t.elapsed();
        let code_dir = vm.attach_code(&code_image, CODE_FSTYPE).await.unwrap();
        let attached = t.elapsed();
        let mut ch = vm.take_channel().unwrap();
        expect_ready(&mut ch).await;
        let ready = t.elapsed();
        init_and_invoke(&mut ch, &code_dir, json!(i)).await;
        let total = t.elapsed();
        println!(
            "restore {i}: running {}, code attached {}, ready {}, first answer {}",
            ms(restored),
            ms(attached),
            ms(ready),
            ms(total)
        );
        restore_times.push(total);
    }
    let (b, r) = (median(boot_times), median(restore_times));
    println!(
        "median boot to first answer {}, restore to first answer {}: {:.1}x",
        ms(b),
        ms(r),
        b.as_secs_f64() / r.as_secs_f64()
    );

    let mut vms = Vec::new();
    for i in 0..idle_vms {
        let mut vm = template.restore(&opts).await.unwrap();
        let code_dir = vm.attach_code(&code_image, CODE_FSTYPE).await.unwrap();
        let mut ch = vm.take_channel().unwrap();
        expect_ready(&mut ch).await;
        init_and_invoke(&mut ch, &code_dir, json!(i)).await;
        vms.push((vm, ch));
    }
    // What an idle, running guest costs (as a VM waiting in the pool is).
    let window = Duration::from_secs(10);
    let before: Vec<u64> = vms.iter().map(|(vm, _)| cpu_ticks(vm.pid())).collect();
    tokio::time::sleep(window).await;
    for (i, (vm, _)) in vms.iter().enumerate() {
        let used = cpu_ticks(vm.pid()) - before[i];
        let ms = used * 1000 / ticks_per_second();
        println!(
            "idle restored VM {i} (running): {ms} ms of CPU in {} s ({:.1} % of a core)",
            window.as_secs(),
            ms as f64 / window.as_millis() as f64 * 100.0
        );
    }
    for (vm, _) in vms.iter_mut() {
        vm.pause().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut total = 0;
    for (i, (vm, _)) in vms.iter().enumerate() {
        let pss = vm.pss_bytes().unwrap();
        total += pss;
        println!(
            "idle restored VM {i} (paused after one answer): PSS {} MiB",
            pss >> 20
        );
    }
    println!(
        "{idle_vms} idle VMs: PSS {} MiB in all, {} MiB each",
        total >> 20,
        (total / idle_vms as u64) >> 20
    );
    if args.iter().any(|a| a == "--smaps") {
        let pid = vms[0].0.pid();
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let mut maps: Vec<(u64, String)> = Vec::new();
        let mut name = String::new();
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let (first, second) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            if first.contains('-') && second.len() == 4 && !first.ends_with(':') {
                name = line
                    .split_whitespace()
                    .skip(5)
                    .collect::<Vec<_>>()
                    .join(" ");
                if name.is_empty() {
                    let (a, b) = first.split_once('-').unwrap_or(("0", "0"));
                    let size = u64::from_str_radix(b, 16).unwrap_or(0)
                        - u64::from_str_radix(a, 16).unwrap_or(0);
                    name = format!("[anon {} MiB]", size >> 20);
                }
            } else if let Some(v) = line.strip_prefix("Pss:") {
                let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                maps.push((kb, name.clone()));
            }
        }
        let mut by_name = std::collections::BTreeMap::new();
        for (kb, n) in maps {
            *by_name.entry(n).or_insert(0u64) += kb;
        }
        let mut v: Vec<_> = by_name.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        for (n, kb) in v.iter().take(8) {
            println!("  {kb:>8} kB  {n}");
        }
    }
}
