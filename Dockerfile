# Every Switchyard service in one image: the statically linked `switchyard` binary and nothing
# else. Build the binary first (no Rust toolchain or base image is needed in Docker, so this
# works on engines that cannot pull images):
#   scripts/build-static.sh && docker compose up --build
FROM scratch
COPY target/docker/switchyard /switchyard
USER 65534:65534
ENTRYPOINT ["/switchyard"]
