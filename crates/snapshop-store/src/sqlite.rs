//! SQLite backend (being ported from the service's `src/store`).
