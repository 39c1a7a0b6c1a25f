//! The kernel's floor under a proxied send on this machine: what one syscall costs by
//! itself, and what the socket work every proxy does per request costs, whoever calls it.
//! It bounds what any user-space change can win (issue 24): a proxied request is two
//! loopback TCP `send` + `recv` pairs (client → proxy → upstream and back) whatever the
//! proxy; batching syscalls (io_uring) can save at most the per-call entry cost, not
//! the TCP work inside.
//!
//! `cargo bench --bench kernel_floor` (Linux only; `benches/load/profile.sh` runs it
//! beside the per-request profile of the gateway and nginx).

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use criterion::{criterion_group, Criterion};

/// A Cloud API send's request as the load benchmark sends it (~600 bytes with headers).
const REQUEST: usize = 600;

fn syscalls(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernel_floor");
    // The fixed cost of entering and leaving the kernel: what batching could save per call.
    g.bench_function("syscall_getppid", |b| {
        // SAFETY: getppid takes no arguments and cannot fail.
        b.iter(|| black_box(unsafe { libc::getppid() }))
    });

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.set_nodelay(true).expect("nodelay");
    server.set_nodelay(true).expect("nodelay");
    let fd = server.as_raw_fd();
    let mut buf = [0u8; 4096];

    // A read that finds nothing: the call readiness tracking exists to avoid.
    g.bench_function("recv_eagain_tcp", |b| {
        b.iter(|| {
            // SAFETY: `buf` outlives the call and its length is passed.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            black_box(n)
        })
    });

    // SAFETY: plain epoll set-up on a socket this function owns.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0, "epoll_create1");
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 0,
    };
    // SAFETY: `ep` and `fd` are open; `ev` is valid for the call.
    assert_eq!(
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) },
        0
    );
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    g.bench_function("epoll_wait_nothing_ready", |b| {
        b.iter(|| {
            // SAFETY: `events` outlives the call and its length is passed.
            black_box(unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 64, 0) })
        })
    });

    // One hop of a proxied request: a request-sized write on loopback TCP and the read of
    // it on the other end, in one thread (no wake-up of a sleeping peer: the cheapest case).
    let request = [b'x'; REQUEST];
    g.bench_function("tcp_loopback_send_recv_600b", |b| {
        b.iter(|| {
            client.write_all(&request).expect("write");
            let mut got = 0;
            while got < REQUEST {
                got += server.read(&mut buf).expect("read");
            }
            black_box(got)
        })
    });
    g.finish();
    // SAFETY: `ep` was opened above and is not used after this.
    unsafe { libc::close(ep) };
}

criterion_group!(benches, syscalls);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
