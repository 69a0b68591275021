// The NBD session: handshake and transmission states (docs/requirements/nbd.md §1.2-§1.7).
export { nbdSessionModel, NBD_SESSION, NBD_SESSION_BAD, DEFAULT_NBD_SESSION_PARAMS } from './model.ts';
export type { Command, NbdSessionAction, NbdSessionParams, NbdSessionState, NbdSessionVariant, OptionName, OptionReply, Outstanding, Phase } from './model.ts';
