# Remote inputs land in data/downloads/{file}: URLs (mirrors in order) and sha256 from
# config.yaml's `downloads:` (else the package's built-in table), checked against and recorded
# in data/checksums.tsv. Local rule: cluster compute nodes often have no internet access.
import samsbench.data.download as sbdownload


rule download:
    output:
        "data/downloads/{file}",
    log:
        f"{RESULTS}/logs/download/{{file}}.log",
    wildcard_constraints:
        file=r"[^/]+",
    localrule: True
    conda:
        "../../envs/samsbench.yaml"
    params:
        source=lambda wc: sbdownload.resolve(wc.file, config.get("downloads")),
        checksums="data/checksums.tsv",
        require_checksum=config.get("require_checksums", False),
        limits=config["download_limits"],
    message:
        rule_message("Download {wildcards.file}")
    script:
        "../scripts/download.py"
