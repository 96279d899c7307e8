//! A valid component built for another world: a node must refuse it clearly.

wit_bindgen::generate!({
    path: "wit",
    world: "alien",
});

struct Alien;

impl Guest for Alien {
    fn greet() -> String {
        "hello from elsewhere".into()
    }
}

export!(Alien);
