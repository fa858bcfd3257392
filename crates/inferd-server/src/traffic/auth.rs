//! Bearer tokens for the admin API (`--admin-token`) and for outcome feedback
//! (`--feedback-token`). A token is `NAME:SECRET` (the name goes to the audit log) or a bare
//! `SECRET` (named `admin` or `feedback`). Secrets are kept only as SHA-256 digests and compared
//! digest to digest in constant time (`subtle`), against every token without stopping early,
//! so neither the length of a match nor which token matched shows in the timing.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One named token.
#[derive(Clone)]
pub struct Token {
    name: String,
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, not even its digest.
        f.debug_struct("Token").field("name", &self.name).finish()
    }
}

impl Token {
    /// `NAME:SECRET` or `SECRET` (named `default_name`); an empty secret is refused.
    pub fn parse(text: &str, default_name: &str) -> Result<Token, String> {
        let (name, secret) = match text.split_once(':') {
            Some((n, s)) if !n.is_empty() => (n, s),
            _ => (default_name, text),
        };
        if secret.is_empty() {
            return Err(format!("token '{name}' has an empty secret"));
        }
        Ok(Token {
            name: name.to_string(),
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// The token's name, as the audit log shows it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header (401).
    Missing,
    /// A token that matches none (403).
    Wrong,
}

impl Denied {
    /// The answer's text.
    pub fn message(self) -> &'static str {
        match self {
            Denied::Missing => "this call needs 'Authorization: Bearer <token>'",
            Denied::Wrong => "the bearer token is not valid for this call",
        }
    }
}

/// The tokens a server accepts.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    admin: Vec<Token>,
    feedback: Vec<Token>,
}

/// Who made a call: a token's name, or `anonymous` where no token is configured.
pub const ANONYMOUS: &str = "anonymous";

impl Auth {
    /// Admin and feedback tokens.
    pub fn new(admin: Vec<Token>, feedback: Vec<Token>) -> Auth {
        Auth { admin, feedback }
    }

    /// Whether mutating calls are open to anyone (no admin token configured).
    pub fn admin_open(&self) -> bool {
        self.admin.is_empty()
    }

    /// Whether feedback is open to anyone (no feedback or admin token configured).
    pub fn feedback_open(&self) -> bool {
        self.admin.is_empty() && self.feedback.is_empty()
    }

    /// Checks an `Authorization` header value for a mutating call; the caller's name.
    pub fn admin(&self, authorization: Option<&str>) -> Result<String, Denied> {
        if self.admin.is_empty() {
            return Ok(ANONYMOUS.into());
        }
        check(&self.admin, authorization)
    }

    /// Checks an `Authorization` header value for feedback: a feedback or an admin token.
    pub fn feedback(&self, authorization: Option<&str>) -> Result<String, Denied> {
        if self.feedback_open() {
            return Ok(ANONYMOUS.into());
        }
        let all: Vec<Token> = self.feedback.iter().chain(&self.admin).cloned().collect();
        check(&all, authorization)
    }
}

fn check(tokens: &[Token], authorization: Option<&str>) -> Result<String, Denied> {
    let Some(value) = authorization else {
        return Err(Denied::Missing);
    };
    let Some(secret) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Err(Denied::Missing);
    };
    let digest: [u8; 32] = Sha256::digest(secret.trim().as_bytes()).into();
    let mut found: Option<&Token> = None;
    for t in tokens {
        if bool::from(t.digest.ct_eq(&digest)) {
            found = Some(t);
        }
    }
    found.map(|t| t.name.clone()).ok_or(Denied::Wrong)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(
            vec![
                Token::parse("alice:s3cret", "admin").unwrap(),
                Token::parse("plain", "admin").unwrap(),
            ],
            vec![Token::parse("app:fb", "feedback").unwrap()],
        )
    }

    #[test]
    fn admin_token_names_the_caller() {
        let a = auth();
        assert_eq!(a.admin(Some("Bearer s3cret")).unwrap(), "alice");
        assert_eq!(a.admin(Some("Bearer plain")).unwrap(), "admin");
    }

    #[test]
    fn missing_is_401_and_wrong_is_403() {
        let a = auth();
        assert_eq!(a.admin(None), Err(Denied::Missing));
        assert_eq!(a.admin(Some("Basic s3cret")), Err(Denied::Missing));
        assert_eq!(a.admin(Some("Bearer s3cre")), Err(Denied::Wrong));
        assert_eq!(a.admin(Some("Bearer fb")), Err(Denied::Wrong));
    }

    #[test]
    fn feedback_takes_feedback_or_admin_tokens() {
        let a = auth();
        assert_eq!(a.feedback(Some("Bearer fb")).unwrap(), "app");
        assert_eq!(a.feedback(Some("Bearer s3cret")).unwrap(), "alice");
        assert_eq!(a.feedback(Some("Bearer nope")), Err(Denied::Wrong));
    }

    #[test]
    fn no_tokens_leaves_calls_open() {
        let a = Auth::default();
        assert_eq!(a.admin(None).unwrap(), ANONYMOUS);
        assert_eq!(a.feedback(None).unwrap(), ANONYMOUS);
    }

    #[test]
    fn empty_secret_is_refused() {
        assert!(Token::parse("bob:", "admin").is_err());
        assert!(Token::parse("", "admin").is_err());
    }
}
