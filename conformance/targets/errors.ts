// Harness errors: the runner or a target could not do its job (exit code 2, verdict "error"),
// as opposed to a server that does not conform (verdict "fail").
export class HarnessError extends Error {
  override readonly name = 'HarnessError';
}
