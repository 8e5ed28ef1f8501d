//! Step 5 of the request path: the OAuth2 client_credentials token service.

pub struct TokenService {}

/// An argon2id PHC string for `secret_hash`.
pub fn hash_secret(secret: &str) -> Result<String, String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}
