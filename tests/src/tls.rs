//! A throw-away certificate authority for the tests, made with the `openssl` command
//! (Debian package `openssl`): a CA and the server certificates it issues, as PEM files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A CA whose files live in `dir`.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    /// The CA certificate: the file clients trust.
    pub cert: PathBuf,
    key: PathBuf,
}

/// A certificate a [`TestCa`] issued, with its private key.
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its unencrypted private key (PEM, mode 0600).
    pub key: PathBuf,
}

impl TestCa {
    /// A new self-signed CA named `name` (files `<name>.pem`, `<name>.key` in `dir`).
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("CA dir");
        let ca = Self {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        ca.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &ca.key.display().to_string(),
            "-out",
            &ca.cert.display().to_string(),
            "-days",
            "2",
            "-subj",
            &format!("/CN=erpstream test CA {name}"),
        ]);
        ca
    }

    /// Issues a server certificate for `localhost` and `127.0.0.1`, files `<file>.pem` and
    /// `<file>.key`; issuing the same `file` again replaces them (a rotation).
    pub fn issue(&self, file: &str) -> Issued {
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        let csr = self.dir.join(format!("{file}.csr"));
        let san = self.dir.join(format!("{file}.san"));
        self.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &issued.key.display().to_string(),
            "-out",
            &csr.display().to_string(),
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(&san, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("san");
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr.display().to_string(),
            "-CA",
            &self.cert.display().to_string(),
            "-CAkey",
            &self.key.display().to_string(),
            "-CAcreateserial",
            "-out",
            &issued.cert.display().to_string(),
            "-days",
            "2",
            "-extfile",
            &san.display().to_string(),
        ]);
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(0o600))
                .expect("key mode");
        }
        issued
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run openssl (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?} (CA {}): {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// stunnel (Debian package `stunnel4`) serving TLS with a certificate on a port of its own
/// and passing the plain bytes on to `127.0.0.1:<target>`.
pub struct TlsTerminator {
    child: Child,
    /// The TLS port on 127.0.0.1.
    pub port: u16,
}

impl TlsTerminator {
    /// Starts it in `dir` in front of `target`, serving `certificate`, and waits for its port.
    pub fn start(dir: &Path, certificate: &Issued, target: u16) -> Self {
        Self::start_on(dir, certificate, crate::free_port(), target)
    }

    /// The same on a chosen `port`.
    pub fn start_on(dir: &Path, certificate: &Issued, port: u16, target: u16) -> Self {
        let conf = dir.join(format!("stunnel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\n[tls]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{target}\ncert = {}\nkey = {}\n",
                certificate.cert.display(),
                certificate.key.display()
            ),
        )
        .expect("stunnel.conf");
        let log =
            std::fs::File::create(dir.join(format!("stunnel-{port}.log"))).expect("stunnel log");
        let child = Command::new("stunnel4")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start stunnel4 (Debian package stunnel4)");
        crate::wait_for_port(port);
        Self { child, port }
    }
}

impl TlsTerminator {
    /// Stops it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        self.stop();
    }
}
