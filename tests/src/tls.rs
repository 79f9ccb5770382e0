//! A throw-away certificate authority for the tests, made with the `openssl` command
//! (Debian package `openssl`): a CA and the server certificates it issues, as PEM files.

use std::path::{Path, PathBuf};
use std::process::Command;

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
