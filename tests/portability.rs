//! Every variant of every kernel file parses, validates and translates to SPIR-V, MSL and HLSL with naga,
//! so Metal and DX12 failures are caught without those machines. Needs no device.

use std::collections::BTreeSet;

use mobilellm_kernels::shader::{all_kernels, flags_used, ShaderVariant};

fn translate(name: &str, variant: &ShaderVariant, source: &str) {
    let what = format!("{name} [{}]", variant.key());
    let module =
        naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{what}: parse: {}", e.emit_to_string(source)));
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what}: validate: {}", e.emit_to_string(source)));
    naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
        .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e}"));
    let msl_options = naga::back::msl::Options { lang_version: (2, 4), ..Default::default() };
    naga::back::msl::write_string(&module, &info, &msl_options, &naga::back::msl::PipelineOptions::default())
        .unwrap_or_else(|e| panic!("{what}: MSL: {e}"));
    let mut hlsl = String::new();
    let hlsl_options =
        naga::back::hlsl::Options { shader_model: naga::back::hlsl::ShaderModel::V6_2, ..Default::default() };
    naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &Default::default())
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{what}: HLSL: {e}"));
}

#[test]
fn every_variant_of_every_kernel_translates() {
    let mut count = 0;
    for kernel in all_kernels() {
        for variant in ShaderVariant::enumerate(kernel) {
            let source = variant.preprocess(kernel).unwrap_or_else(|e| panic!("{e}"));
            translate(kernel.name, &variant, &source);
            count += 1;
        }
    }
    eprintln!("{count} kernel variants translated to SPIR-V, MSL and HLSL");
}

#[test]
fn registry_covers_every_kernel_file_and_flag() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
    let files: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let registered: BTreeSet<String> = all_kernels().iter().map(|k| k.name.to_string()).collect();
    assert_eq!(files, registered, "every kernels/*.wgsl must be registered in shader::all_kernels()");
    for kernel in all_kernels() {
        let declared: BTreeSet<String> =
            kernel.flags.iter().chain(kernel.choices.iter().flat_map(|g| g.iter())).map(|s| s.to_string()).collect();
        for flag in flags_used(kernel) {
            assert!(
                declared.contains(&flag),
                "{}: flag `{flag}` is used but not declared in the registry",
                kernel.name
            );
        }
    }
}
