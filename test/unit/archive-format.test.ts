import { describe, expect, it } from "vitest";
import {
  configDiffIds,
  detectArchiveFormat,
  ociReference,
  parseDockerManifest,
  parseImageConfig,
  parseOciManifest,
  pickFromIndex,
  withDiffIds,
} from "../../src/images/archive-format.js";
import { archiveImageName, imageNameFromFile, sniffCompression } from "../../src/images/import.js";
import { canonicalImageName, imageNameFromReference } from "../../src/images/store.js";

const hex = (c: string) => c.repeat(64);

describe("detectArchiveFormat", () => {
  it.each([
    [["manifest.json", "abc/layer.tar"], "docker-save"],
    [["manifest.json", "index.json", "oci-layout", "blobs/sha256/x"], "docker-save"],
    [["index.json", "oci-layout", "blobs/sha256/x"], "oci"],
    [["index.json", "etc/passwd"], "rootfs"],
    [["etc/passwd", "bin/sh"], "rootfs"],
    [[], "rootfs"],
  ])("%j is %s", (members, format) => {
    expect(detectArchiveFormat(new Set(members))).toBe(format);
  });
});

describe("parseDockerManifest", () => {
  it("reads the classic layout and the blobs layout", () => {
    expect(
      parseDockerManifest([
        { Config: `${hex("c")}.json`, Layers: ["a/layer.tar", `./blobs/sha256/${hex("b")}`] },
      ]),
    ).toEqual({
      config: `${hex("c")}.json`,
      layers: [
        { member: "a/layer.tar" },
        { member: `blobs/sha256/${hex("b")}`, storedSha256: hex("b") },
      ],
      repoTags: [],
    });
    expect(
      parseDockerManifest([
        { Config: "c.json", Layers: [], RepoTags: ["mini:layered", "mini:latest"] },
      ]).repoTags,
    ).toEqual(["mini:layered", "mini:latest"]);
    // `docker save IMAGE_ID` writes no RepoTags (null).
    expect(
      parseDockerManifest([{ Config: "c.json", Layers: [], RepoTags: null }]).repoTags,
    ).toEqual([]);
  });

  it.each([
    [{}, /not a list of images/],
    [[], /lists 0 images/],
    [
      [
        { Config: "c.json", Layers: [] },
        { Config: "d.json", Layers: [] },
      ],
      /lists 2 images/,
    ],
    [[{ Layers: [] }], /Config is not a file name/],
    [[{ Config: "../c.json", Layers: [] }], /Config "..\/c.json" contains ".."/],
    [[{ Config: "c.json", Layers: ["/etc/x"] }], /layer 1 "\/etc\/x" is an absolute path/],
    [[{ Config: "c.json", Layers: ["a/../../x"] }], /layer 1 .* contains "\.\."/],
    [[{ Config: "c.json" }], /Layers is not a list/],
    [[{ Config: "c.json", Layers: [42] }], /layer 1 is not a file name/],
  ])("refuses %j", (json, message) => {
    expect(() => parseDockerManifest(json)).toThrow(message);
  });
});

describe("image config", () => {
  it("takes Env (PATH defaulted) and the architecture", () => {
    expect(
      parseImageConfig({
        architecture: "amd64",
        config: { Env: ["LANG=C.UTF-8", "X=a=b", "EMPTY=", "bad", "1X=no", 7] },
      }),
    ).toEqual({
      env: {
        LANG: "C.UTF-8",
        X: "a=b",
        EMPTY: "",
        PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      },
      architecture: "amd64",
      entrypoint: null,
      cmd: null,
      workingDir: null,
    });
    expect(parseImageConfig({ config: { Env: ["PATH=/bin"] } }).env).toEqual({ PATH: "/bin" });
    expect(parseImageConfig({ config: null }).env.PATH).toMatch(/\/usr\/bin/);
    expect(() => parseImageConfig({ config: { Env: "PATH=/bin" } })).toThrow(/Env is not a list/);
  });

  it("takes Entrypoint, Cmd and WorkingDir (absolute, normalised)", () => {
    expect(
      parseImageConfig({
        config: { Entrypoint: ["/bin/tool", "--x"], Cmd: ["a b"], WorkingDir: "/srv/app/" },
      }),
    ).toMatchObject({ entrypoint: ["/bin/tool", "--x"], cmd: ["a b"], workingDir: "/srv/app" });
    expect(
      parseImageConfig({ config: { Entrypoint: null, Cmd: [], WorkingDir: "" } }),
    ).toMatchObject({ entrypoint: null, cmd: null, workingDir: null });
    expect(parseImageConfig({ config: { WorkingDir: "app/./x/../y" } }).workingDir).toBe("/app/y");
    expect(parseImageConfig({ config: { WorkingDir: "/../../etc" } }).workingDir).toBe("/etc");
    expect(parseImageConfig({ config: { WorkingDir: "/" } }).workingDir).toBe("/");
  });

  it.each([
    [{ Cmd: "echo hi" }, /Cmd is not a list of strings/],
    [{ Entrypoint: ["/bin/sh", 1] }, /Entrypoint is not a list of strings/],
    [{ Cmd: ["a\0b"] }, /Cmd contains a NUL byte/],
    [{ WorkingDir: 7 }, /WorkingDir is not a string/],
  ])("refuses the config %j", (config, message) => {
    expect(() => parseImageConfig({ config })).toThrow(message);
  });

  it("reads diff ids and pairs them with layers", () => {
    const ids = configDiffIds({
      rootfs: { diff_ids: [`sha256:${hex("1")}`, `sha256:${hex("2")}`] },
    });
    expect(ids).toEqual([hex("1"), hex("2")]);
    expect(configDiffIds({})).toBeUndefined();
    expect(() => configDiffIds({ rootfs: { diff_ids: ["md5:x"] } })).toThrow(/diff id 1/);
    expect(withDiffIds([{ member: "a" }, { member: "b" }], ids)).toEqual([
      { member: "a", diffSha256: hex("1") },
      { member: "b", diffSha256: hex("2") },
    ]);
    expect(() => withDiffIds([{ member: "a" }], ids)).toThrow(
      /names 2 layers but the manifest lists 1/,
    );
  });
});

describe("OCI", () => {
  const manifest = (digest: string, platform?: object) => ({
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    digest: `sha256:${digest}`,
    size: 1,
    ...(platform ? { platform } : {}),
  });

  it("picks the only manifest, or the one for linux and this architecture", () => {
    expect(pickFromIndex({ manifests: [manifest(hex("a"))] }, "amd64").digest).toBe(
      `sha256:${hex("a")}`,
    );
    const multi = {
      manifests: [
        manifest(hex("a"), { os: "linux", architecture: "arm64" }),
        manifest(hex("b"), { os: "linux", architecture: "amd64" }),
        manifest(hex("c"), { os: "unknown", architecture: "unknown" }),
      ],
    };
    expect(pickFromIndex(multi, "amd64").digest).toBe(`sha256:${hex("b")}`);
    expect(pickFromIndex(multi, "arm64").digest).toBe(`sha256:${hex("a")}`);
    expect(() => pickFromIndex(multi, "riscv64")).toThrow(
      /lists 2 images and 0 for linux\/riscv64/,
    );
    expect(() => pickFromIndex({ manifests: [] }, "amd64")).toThrow(/no manifests/);
    expect(() => pickFromIndex({ manifests: [{ digest: "sha256:short" }] }, "amd64")).toThrow(
      /no sha256 digest/,
    );
  });

  it("reads a manifest's layers as blobs with their digests", () => {
    const m = parseOciManifest({
      config: {
        mediaType: "application/vnd.oci.image.config.v1+json",
        digest: `sha256:${hex("c")}`,
      },
      layers: [
        { mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: `sha256:${hex("1")}` },
        { mediaType: "application/vnd.oci.image.layer.v1.tar", digest: `sha256:${hex("2")}` },
      ],
    });
    expect(m.config.digest).toBe(`sha256:${hex("c")}`);
    expect(m.layers).toEqual([
      { member: `blobs/sha256/${hex("1")}`, storedSha256: hex("1") },
      { member: `blobs/sha256/${hex("2")}`, storedSha256: hex("2") },
    ]);
  });

  it.each([
    [{ layers: [] }, /config has no sha256 digest/],
    [{ config: { digest: `sha256:${hex("c")}` } }, /layers are not a list/],
    [
      {
        config: { digest: `sha256:${hex("c")}` },
        layers: [
          {
            mediaType: "application/vnd.oci.image.layer.v1.tar+zstd",
            digest: `sha256:${hex("1")}`,
          },
        ],
      },
      /zstd-compressed/,
    ],
    [
      {
        config: { digest: `sha256:${hex("c")}` },
        layers: [{ mediaType: "x", digest: `sha256:${hex("1")}`, urls: ["http://x.invalid/"] }],
      },
      /foreign layer/,
    ],
    [
      { config: { digest: `sha256:${hex("c")}` }, layers: [{ digest: `sha512:${hex("1")}` }] },
      /layer 1 has no sha256 digest/,
    ],
  ])("refuses %j", (json, message) => {
    expect(() => parseOciManifest(json)).toThrow(message);
  });
});

describe("imageNameFromFile and sniffCompression", () => {
  it.each([
    ["/tmp/alpine.tar", "alpine"],
    ["Ubuntu_22.04.tar.gz", "ubuntu_22.04"],
    ["my image.tgz", "my-image"],
    ["--x.tar", "x"],
    ["....tar", null],
  ])("%j is named %j", (file, name) => {
    expect(imageNameFromFile(file)).toBe(name);
  });

  it.each([
    [[0x1f, 0x8b, 8], "gzip"],
    [[0x28, 0xb5, 0x2f, 0xfd], "zstd"],
    [[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0], "xz"],
    [[0x42, 0x5a, 0x68, 0x39], "bzip2"],
    [[0x65, 0x74, 0x63], "none"],
    [[], "none"],
  ])("%j is %s", (bytes, kind) => {
    expect(sniffCompression(Buffer.from(bytes))).toBe(kind);
  });
});

describe("image names from the archive", () => {
  it.each([
    ["mini:layered", "mini:layered"],
    ["mini:latest", "mini"],
    ["mini", "mini"],
    ["docker.io/library/mini:layered", "mini:layered"],
    ["localhost:5000/acme/tool:1.2-rc_3", "tool:1.2-rc_3"],
    [`ghcr.io/acme/tool@sha256:${"a".repeat(64)}`, "tool"],
    ["Mini:V1", "mini:V1"],
    ["mini:-bad", null],
    ["mini:", null],
    [`sha256:${"a".repeat(64)}`, null],
    ["", null],
    ["x".repeat(64), null],
  ])("reference %j is named %j", (ref, name) => {
    expect(imageNameFromReference(ref)).toBe(name);
  });

  it("drops the tag latest, as Docker reads it", () => {
    expect(canonicalImageName("mini:latest")).toBe("mini");
    expect(canonicalImageName("mini:v1")).toBe("mini:v1");
    expect(canonicalImageName("mini")).toBe("mini");
  });

  it("reads an OCI index's reference: containerd's whole name, else ref.name", () => {
    const d = (annotations?: Record<string, string>) => ({
      mediaType: "",
      digest: `sha256:${hex("a")}`,
      ...(annotations ? { annotations } : {}),
    });
    expect(ociReference(d())).toBeNull();
    expect(ociReference(d({ "org.opencontainers.image.ref.name": "1.0" }))).toEqual({
      kind: "tag",
      value: "1.0",
    });
    expect(ociReference(d({ "org.opencontainers.image.ref.name": "mini:layered" }))).toEqual({
      kind: "reference",
      value: "mini:layered",
    });
    expect(
      ociReference(
        d({
          "io.containerd.image.name": "docker.io/library/mini:layered",
          "org.opencontainers.image.ref.name": "layered",
        }),
      ),
    ).toEqual({ kind: "reference", value: "docker.io/library/mini:layered" });
  });

  it("names the image after the first RepoTag, or the OCI reference, else nothing", () => {
    expect(archiveImageName({ repoTags: ["mini:layered", "other:x"] }, "/tmp/save.tar")).toBe(
      "mini:layered",
    );
    expect(archiveImageName({ repoTags: [] }, "/tmp/save.tar")).toBeNull();
    expect(archiveImageName({ repoTags: ["bad name"] }, "/tmp/save.tar")).toBeNull();
    expect(
      archiveImageName({ oci: { kind: "reference", value: "a/b/mini:2" } }, "/tmp/x.tar"),
    ).toBe("mini:2");
    // A bare OCI tag goes after the file's name.
    expect(archiveImageName({ oci: { kind: "tag", value: "1.0" } }, "/tmp/alpine.tar")).toBe(
      "alpine:1.0",
    );
    expect(archiveImageName({ oci: { kind: "tag", value: "latest" } }, "/tmp/alpine.tar")).toBe(
      "alpine",
    );
    expect(archiveImageName({ oci: null }, "/tmp/alpine.tar")).toBeNull();
  });
});
