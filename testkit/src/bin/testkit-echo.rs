//! A TCP and UDP echo server and two clients, for tests to run inside network namespaces
//! (`Net::command(i, env!("CARGO_BIN_EXE_testkit-echo"))`): a program of our own, so nothing
//! has to be installed (no `nc`, `socat` or Python).
//!
//! - `testkit-echo serve`: echoes TCP and UDP on one port of every address; prints
//!   `ready <port>` once both sockets are bound.
//! - `testkit-echo probe <ip:port>`: one TCP and one UDP round trip, 1 s each; prints
//!   `tcp=<result> udp=<result>`, a result being `ok`, `cut` (timed out) or the error.
//! - `testkit-echo hold <ip:port>`: one TCP connection; sends each line read from stdin and
//!   prints each line that comes back, then `error: ...` or `eof` when the connection ends.

// The results are this program's output.
#![allow(clippy::print_stdout)]

use std::{
    error::Error,
    io::{self, BufRead, BufReader, ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(1);
const PING: &[u8] = b"ping\n";

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = || -> Result<SocketAddr, Box<dyn Error>> {
        Ok(args.get(1).ok_or("missing <ip:port>")?.parse()?)
    };
    match args.first().map(String::as_str) {
        Some("serve") => serve(),
        Some("probe") => {
            let target = target()?;
            println!(
                "tcp={} udp={}",
                outcome(tcp_ping(target)),
                outcome(udp_ping(target))
            );
            Ok(())
        }
        Some("hold") => hold(target()?),
        _ => Err("usage: testkit-echo serve | probe <ip:port> | hold <ip:port>".into()),
    }
}

fn serve() -> Result<(), Box<dyn Error>> {
    let tcp = TcpListener::bind("0.0.0.0:0")?;
    let port = tcp.local_addr()?.port();
    let udp = UdpSocket::bind(("0.0.0.0", port))?;
    println!("ready {port}");
    thread::spawn(move || {
        let mut buf = [0; 1500];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    for stream in tcp.incoming().flatten() {
        thread::spawn(move || {
            if let Ok(mut reader) = stream.try_clone() {
                let _ = io::copy(&mut reader, &mut &stream);
            }
        });
    }
    Ok(())
}

fn tcp_ping(target: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(PING)?;
    let mut echo = [0; PING.len()];
    stream.read_exact(&mut echo)?;
    expect_ping(&echo)
}

fn udp_ping(target: SocketAddr) -> io::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    socket.send_to(PING, target)?;
    let mut echo = [0; 64];
    let (n, _) = socket.recv_from(&mut echo)?;
    expect_ping(&echo[..n])
}

fn expect_ping(echo: &[u8]) -> io::Result<()> {
    if echo == PING {
        Ok(())
    } else {
        Err(io::Error::other(format!("echoed {echo:?}")))
    }
}

fn outcome(result: io::Result<()>) -> String {
    match result {
        Ok(()) => "ok".into(),
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => "cut".into(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

fn hold(target: SocketAddr) -> Result<(), Box<dyn Error>> {
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
    let reader = BufReader::new(stream.try_clone()?);
    thread::spawn(move || {
        for line in reader.lines() {
            match line {
                Ok(line) => println!("{line}"),
                Err(error) => return println!("error: {error}"),
            }
        }
        println!("eof");
    });
    for line in io::stdin().lines() {
        writeln!(stream, "{}", line?)?;
    }
    Ok(())
}
