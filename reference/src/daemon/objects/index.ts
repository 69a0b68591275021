// Every object type the reference knows: importing this module registers them.
import './iothread.ts';
import './tls-creds.ts';
import './authz.ts';
import './throttle-group.ts';

export { ObjectStore, objectTypes, parseObjectOptions, registerObjectType, type LiveObject, type ObjectOptions, type ObjectType } from './registry.ts';
