//! The stand-in gitlab-runner process for end-to-end tests; see `gitlab_sim::stand_in`.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    gitlab_sim::stand_in::main_with_args(std::env::args().collect()).await;
}
