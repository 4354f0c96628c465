# Boot image targets, included by the top-level Makefile.
#   make image        build build/image/{vmlinuz,initramfs.cpio,manifest.json}
#   make kernel-pin   re-pin kernel/pin.json to the current Debian cloud kernel
#   make deps-image   install what image builds and boot tests need
# IMAGE_FLAGS passes flags to `worm image build`, e.g.
#   make image IMAGE_FLAGS='-commands none -stack-default kernel'

GO          ?= go
IMAGE_FLAGS ?=
IMAGE_APT   := qemu-system-x86 qemu-utils e2fsprogs dpkg-dev

.PHONY: image kernel-pin deps-image

image:
	CGO_ENABLED=0 $(GO) run ./cmd/worm image build -out build/image $(IMAGE_FLAGS)

kernel-pin:
	CGO_ENABLED=0 $(GO) run ./cmd/worm image pin

deps-image:
	@missing=""; for p in $(IMAGE_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "deps-image: installing$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps-image: $(IMAGE_APT) present"; fi
