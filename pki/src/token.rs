//! Join tokens: `H10<sha256 of the hub CA, hex>::<id>.<secret>`. The hub
//! keeps the id and the SHA-256 of the secret; the board keeps the hash of
//! the CA it may trust and sends `<id>.<secret>` only to a hub presenting it.

/// The version prefix: a token of another shape is refused by name.
const PREFIX: &str = "H10";

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the hub CA certificate's DER, hex.
    pub ca_hash: String,
    /// Public: names the token in lists and logs.
    pub id: String,
    /// 256 random bits, hex.
    pub secret: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a join token: expected H10<CA hash>::<id>.<secret> (as `harvester token create` prints it)")]
    Shape,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, whatever prints it.
        write!(
            f,
            "JoinToken({}, CA {})",
            self.id,
            &self.ca_hash[..12.min(self.ca_hash.len())]
        )
    }
}

impl JoinToken {
    pub fn new(ca_hash: &str) -> JoinToken {
        JoinToken {
            ca_hash: ca_hash.to_string(),
            id: crate::random_hex(6),
            secret: crate::random_hex(32),
        }
    }

    /// What the board sends to the hub once it trusts it.
    pub fn credential(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// What the hub keeps.
    pub fn secret_hash(&self) -> String {
        crate::sha256_hex(self.secret.as_bytes())
    }

    /// Splits `<id>.<secret>` as the hub receives it.
    pub fn split_credential(credential: &str) -> Option<(&str, &str)> {
        let (id, secret) = credential.split_once('.')?;
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(id, 12) && hex(secret, 64)).then_some((id, secret))
    }
}

impl JoinToken {
    /// A user's token as `user create` prints it: the same shape, with the
    /// user's name in place of the id.
    pub fn parse_user_token(s: &str) -> Result<JoinToken, TokenError> {
        let rest = s.trim().strip_prefix(PREFIX).ok_or(TokenError::Shape)?;
        let (hash, credential) = rest.split_once("::").ok_or(TokenError::Shape)?;
        let (name, secret) = credential.split_once('.').ok_or(TokenError::Shape)?;
        let label = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !label || !hex(hash, 64) || !hex(secret, 64) {
            return Err(TokenError::Shape);
        }
        Ok(JoinToken {
            ca_hash: hash.to_ascii_lowercase(),
            id: name.to_string(),
            secret: secret.to_string(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}::{}.{}", self.ca_hash, self.id, self.secret)
    }
}

impl std::str::FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<JoinToken, TokenError> {
        let rest = s.trim().strip_prefix(PREFIX).ok_or(TokenError::Shape)?;
        let (hash, credential) = rest.split_once("::").ok_or(TokenError::Shape)?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Shape);
        }
        let (id, secret) = JoinToken::split_credential(credential).ok_or(TokenError::Shape)?;
        Ok(JoinToken {
            ca_hash: hash.to_ascii_lowercase(),
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_as_printed_and_its_debug_form_hides_the_secret() {
        let t = JoinToken::new(&"ab".repeat(32));
        let back: JoinToken = t.to_string().parse().unwrap();
        assert_eq!(back, t);
        assert!(!format!("{t:?}").contains(&t.secret));
        assert_eq!(JoinToken::split_credential(&t.credential()), Some((&*t.id, &*t.secret)));
    }

    #[test]
    fn a_user_token_names_its_user() {
        let t = JoinToken {
            id: "alice".into(),
            ..JoinToken::new(&"cd".repeat(32))
        };
        let back = JoinToken::parse_user_token(&t.to_string()).unwrap();
        assert_eq!((back.id.as_str(), back.credential()), ("alice", t.credential()));
        assert!(JoinToken::parse_user_token("H10xyz::alice.00").is_err());
        assert!(t.to_string().parse::<JoinToken>().is_err(), "not a join token");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = JoinToken::new(&"ab".repeat(32)).to_string();
        for bad in [
            "",
            "K10abc::id.secret",
            &good.replacen("H10", "H11", 1),
            &good[..good.len() - 1],
            &good.replace("::", ":"),
        ] {
            assert_eq!(bad.parse::<JoinToken>(), Err(TokenError::Shape), "{bad}");
        }
    }
}
