fn main() -> std::process::ExitCode {
    cocoon::main()
}
