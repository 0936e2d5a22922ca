//! TLS beyond the public roots: a private CA to trust instead of them, and a client certificate
//! to present (an etcd with `--client-cert-auth`, an object store behind a company CA). Read from
//! PEM files once, when a client is built; a file that holds no usable certificate or key is an
//! error naming it, never an empty trust store.

use std::path::{Path, PathBuf};

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

/// Why a TLS file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not PEM, or holds none of what it should.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        what: String,
    },
}

/// What a client trusts and presents over TLS; [`Tls::default`] is the public (Mozilla) roots and
/// no client certificate.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    roots: Option<Vec<Certificate<'static>>>,
    identity: Option<ClientCert>,
}

impl Tls {
    /// Trusts the CA certificates in `ca` (PEM, one or more) **instead of** the public roots: a
    /// server of a private PKI is not also accepted with a certificate any public CA signed.
    pub fn with_ca_file(mut self, ca: &Path) -> Result<Tls, TlsError> {
        let mut certs = Vec::new();
        for item in pem_items(ca)? {
            if let PemItem::Certificate(c) = item {
                certs.push(c);
            }
        }
        if certs.is_empty() {
            return Err(TlsError::Pem {
                path: ca.into(),
                what: "no CERTIFICATE block: not a CA certificate file".into(),
            });
        }
        self.roots = Some(certs);
        Ok(self)
    }

    /// Presents the certificate chain in `cert` (PEM, the client's own certificate first) with
    /// the private key in `key` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn with_client_cert(mut self, cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let chain: Vec<_> = pem_items(cert)?
            .into_iter()
            .filter_map(|i| match i {
                PemItem::Certificate(c) => Some(c),
                _ => None,
            })
            .collect();
        if chain.is_empty() {
            return Err(TlsError::Pem { path: cert.into(), what: "no CERTIFICATE block".into() });
        }
        let mut keys: Vec<PrivateKey<'static>> = pem_items(key)?
            .into_iter()
            .filter_map(|i| match i {
                PemItem::PrivateKey(k) => Some(k),
                _ => None,
            })
            .collect();
        let key_one = match keys.len() {
            1 => keys.remove(0),
            0 => return Err(TlsError::Pem { path: key.into(), what: "no PRIVATE KEY block".into() }),
            n => return Err(TlsError::Pem { path: key.into(), what: format!("{n} private keys; give one") }),
        };
        self.identity = Some(ClientCert::new_with_certs(&chain, key_one));
        Ok(self)
    }

    /// Trusts no server at all: every HTTPS request fails. For a program whose configured trust
    /// cannot be read but whose work needs no request: it must not fall back to the public roots.
    pub fn trust_nothing() -> Tls {
        Tls { roots: Some(Vec::new()), identity: None }
    }

    /// Whether anything differs from the default.
    pub fn is_default(&self) -> bool {
        self.roots.is_none() && self.identity.is_none()
    }

    pub(crate) fn config(&self) -> TlsConfig {
        let roots = match &self.roots {
            Some(certs) => RootCerts::new_with_certs(certs),
            None => RootCerts::WebPki,
        };
        TlsConfig::builder().root_certs(roots).client_cert(self.identity.clone()).build()
    }
}

/// Every PEM block of `path`; an unreadable file or a broken block names the file.
fn pem_items(path: &Path) -> Result<Vec<PemItem<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source })?;
    let items: Vec<_> = ureq::tls::parse_pem(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { path: path.into(), what: format!("not PEM: {e}") })?;
    if items.is_empty() {
        return Err(TlsError::Pem { path: path.into(), what: "no PEM block".into() });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openssl(args: &[&str]) {
        let out = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn a_ca_and_a_client_certificate_are_read_and_bad_files_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let (key, cert) = (p("k.pem"), p("c.pem"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=t",
            "-days",
            "1",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        let tls = Tls::default().with_ca_file(&cert).unwrap().with_client_cert(&cert, &key).unwrap();
        assert!(!tls.is_default());
        assert!(Tls::default().is_default());
        assert!(!Tls::trust_nothing().is_default());
        let _ = tls.config();

        // A key where a certificate belongs, a certificate where a key belongs, junk, nothing.
        let e = Tls::default().with_ca_file(&key).unwrap_err().to_string();
        assert!(e.contains("k.pem") && e.contains("no CERTIFICATE"), "{e}");
        let e = Tls::default().with_client_cert(&cert, &cert).unwrap_err().to_string();
        assert!(e.contains("c.pem") && e.contains("no PRIVATE KEY"), "{e}");
        std::fs::write(p("junk"), "hello\n").unwrap();
        let e = Tls::default().with_ca_file(&p("junk")).unwrap_err().to_string();
        assert!(e.contains("junk") && e.contains("no PEM block"), "{e}");
        let e = Tls::default().with_ca_file(&p("absent")).unwrap_err().to_string();
        assert!(e.contains("absent") && e.contains("No such file"), "{e}");
        let two = format!("{}{}", std::fs::read_to_string(&key).unwrap(), std::fs::read_to_string(&key).unwrap());
        std::fs::write(p("two"), two).unwrap();
        let e = Tls::default().with_client_cert(&cert, &p("two")).unwrap_err().to_string();
        assert!(e.contains("2 private keys"), "{e}");
    }
}
