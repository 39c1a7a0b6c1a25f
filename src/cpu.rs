//! Which CPU each proxy worker runs on (`pin_workers`).
//!
//! With one single-threaded worker per CPU, the scheduler sometimes stacks two workers on
//! one CPU while another idles; under load that cost a third of the throughput on the
//! reference machine (BENCHMARKS.md). Pinning worker `i` to the `i`-th allowed CPU prevents
//! it. Pinning is only right when the workers own those CPUs, hence `auto`.

use crate::config::PinWorkers;

/// The CPUs this process may run on (its affinity mask), in order. Empty when unknown.
pub fn allowed() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `set` is a plain bitmask the kernel fills; its size is passed along.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Vec::new()
    }
}

/// The CPU for each of `workers` workers, or none, given `mode` and the `allowed` CPUs.
pub fn plan(workers: usize, mode: PinWorkers, allowed: &[usize]) -> Vec<Option<usize>> {
    let pin = match mode {
        PinWorkers::Never => false,
        PinWorkers::Always => !allowed.is_empty(),
        PinWorkers::Auto => workers > 1 && workers == allowed.len(),
    };
    (0..workers)
        .map(|i| pin.then(|| allowed[i % allowed.len()]))
        .collect()
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: as in `allowed`; 0 means the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let two = [0, 1];
        assert_eq!(plan(2, PinWorkers::Auto, &two), vec![Some(0), Some(1)]);
        // A quota below the allowed set: the scheduler decides.
        assert_eq!(plan(2, PinWorkers::Auto, &[0, 1, 2, 3]), vec![None, None]);
        assert_eq!(plan(1, PinWorkers::Auto, &[3]), vec![None]);
        assert_eq!(plan(2, PinWorkers::Never, &two), vec![None, None]);
        assert_eq!(
            plan(3, PinWorkers::Always, &[4, 6]),
            vec![Some(4), Some(6), Some(4)]
        );
        assert_eq!(plan(2, PinWorkers::Always, &[]), vec![None, None]);
    }

    #[test]
    fn this_process_has_cpus() {
        #[cfg(target_os = "linux")]
        assert!(!allowed().is_empty());
    }
}
